// Package ecsmeta reads the ECS task metadata endpoint (v4), which gives
// the defaults for the service name (task family) and the sidecar's
// identity (task ARN).
//
// Guarantees: one GET, bounded by the caller's context. Not guaranteed: any
// answer outside ECS; callers treat an error as "no defaults".
package ecsmeta

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// EnvVar names the variable in which ECS passes the endpoint's address.
const EnvVar = "ECS_CONTAINER_METADATA_URI_V4"

// Task is the part of the task metadata leadercron uses.
type Task struct {
	Family  string `json:"Family"`
	TaskARN string `json:"TaskARN"`
}

// Fetch reads <uri>/task.
func Fetch(ctx context.Context, hc *http.Client, uri string) (Task, error) {
	u := strings.TrimSuffix(uri, "/") + "/task"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Task{}, fmt.Errorf("read ecs task metadata: %w", err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return Task{}, fmt.Errorf("read ecs task metadata: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Task{}, fmt.Errorf("read ecs task metadata: %s answered %d", u, resp.StatusCode)
	}
	var t Task
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&t); err != nil {
		return Task{}, fmt.Errorf("read ecs task metadata: decode: %w", err)
	}
	return t, nil
}
