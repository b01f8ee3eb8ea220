package config

import (
	"sort"
	"strings"
)

// KnownVariables returns the names of every global LEADERCRON_* variable
// that Load reads, sorted. Job variables are not listed: any name that
// starts with JobPrefix is a job.
func KnownVariables() []string {
	keys := make([]string, 0, len(envKeys()))
	for _, k := range envKeys() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// IsKnown reports whether name is a variable Load reads: a global from
// KnownVariables, or a job variable (JobPrefix followed by a name).
func IsKnown(name string) bool {
	if rest, ok := strings.CutPrefix(name, JobPrefix); ok {
		return rest != ""
	}
	return knownGlobals()[name]
}
