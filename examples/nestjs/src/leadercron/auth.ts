// Who may trigger: the secrets the sidecar signs with (from the options or
// the environment), or, without any, loopback peers only.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { BlockList, isIP } from 'node:net';
import { MIN_SECRET_BYTES, TriggerKey } from './signature.js';

/** Environment variables read by loadTriggerSecrets. */
export const SecretEnv = {
  secret: 'LEADERCRON_TRIGGER_SECRET',
  secretFile: 'LEADERCRON_TRIGGER_SECRET_FILE',
  previous: 'LEADERCRON_TRIGGER_SECRET_PREVIOUS',
  previousFile: 'LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE',
} as const;

/** A _FILE variable's file larger than this is not a secret file (as the sidecar does). */
const MAX_SECRET_FILE_BYTES = 4 * 1024;

// 127.0.0.0/8 and ::1; BlockList also matches IPv4-mapped forms
// (::ffff:127.0.0.1, ::ffff:7f00:1) against the IPv4 subnet.
const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');

/**
 * Whether address (a socket's remoteAddress) is a loopback address:
 * 127.0.0.0/8 or ::1, IPv4-mapped forms (::ffff:127.0.0.1) included.
 * Anything else, and undefined (a destroyed socket), is not.
 */
export function isLoopback(address: string | undefined): boolean {
  if (!address) {
    return false;
  }
  const zone = address.indexOf('%');
  const a = zone >= 0 ? address.slice(0, zone) : address;
  const family = isIP(a);
  return family !== 0 && loopback.check(a, family === 4 ? 'ipv4' : 'ipv6');
}

/** Reads a secret file: at most 4 KiB, one trailing "\n" or "\r\n" removed. Errors name the path, never the content. */
function readSecretFile(variable: string, path: string): Buffer {
  if (path === '') {
    throw new Error(`leadercron: ${variable} is empty: it must be the path of a file holding the secret`);
  }
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    throw new Error(`leadercron: ${variable}: cannot open ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  try {
    if (fstatSync(fd).isDirectory()) {
      throw new Error(`leadercron: ${variable}: ${path} is a directory, not a file`);
    }
    const buf = Buffer.alloc(MAX_SECRET_FILE_BYTES + 1);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) {
        break;
      }
      n += r;
      if (n > MAX_SECRET_FILE_BYTES) {
        throw new Error(`leadercron: ${variable}: ${path} is larger than ${MAX_SECRET_FILE_BYTES} bytes: not a secret file?`);
      }
    }
    let b = buf.subarray(0, n);
    if (b.length >= 2 && b[b.length - 2] === 0x0d && b[b.length - 1] === 0x0a) {
      b = b.subarray(0, b.length - 2);
    } else if (b.length >= 1 && b[b.length - 1] === 0x0a) {
      b = b.subarray(0, b.length - 1);
    }
    return Buffer.from(b);
  } finally {
    closeSync(fd);
  }
}

/** NAME or NAME_FILE of env; undefined if neither is set. Setting one to "" counts as setting it. */
function secretFromEnv(env: Record<string, string | undefined>, name: string): TriggerKey | undefined {
  const fileVar = `${name}_FILE`;
  const raw = env[name];
  const path = env[fileVar];
  if (raw !== undefined && path !== undefined) {
    throw new Error(`leadercron: ${name} and ${fileVar} are both set: set only one of them`);
  }
  if (raw !== undefined) {
    if (raw === '') {
      throw new Error(`leadercron: ${name} is set but empty; it must be at least ${MIN_SECRET_BYTES} bytes (unset it to accept only unsigned triggers from loopback peers)`);
    }
    return new TriggerKey(raw, name);
  }
  if (path !== undefined) {
    return new TriggerKey(readSecretFile(fileVar, path), `${fileVar} (the file's content, less one trailing newline)`);
  }
  return undefined;
}

/**
 * The trigger secrets configured in env (default process.env), current
 * first: LEADERCRON_TRIGGER_SECRET or LEADERCRON_TRIGGER_SECRET_FILE (a
 * file holding it, one trailing "\n" or "\r\n" removed), and for a rotation
 * LEADERCRON_TRIGGER_SECRET_PREVIOUS or LEADERCRON_TRIGGER_SECRET_PREVIOUS_FILE.
 * [] if none is set. Throws an Error naming the variable (never the secret)
 * if both forms of one are set, a secret is shorter than 32 bytes or empty,
 * a file cannot be read, or a previous secret is set without a current one.
 */
export function loadTriggerSecrets(env: Record<string, string | undefined> = process.env): TriggerKey[] {
  const current = secretFromEnv(env, SecretEnv.secret);
  const previous = secretFromEnv(env, SecretEnv.previous);
  if (!current && previous) {
    throw new Error(
      `leadercron: ${SecretEnv.previous} is set but ${SecretEnv.secret} is not: set the current secret too (the previous one is only accepted during a rotation)`,
    );
  }
  return [current, previous].filter((k): k is TriggerKey => k !== undefined);
}

/**
 * The keys of the module's `secrets` option, or of the environment when the
 * option is not given. Duplicates are dropped. Throws an Error naming the
 * option or variable of a bad secret.
 */
export function resolveTriggerKeys(secrets: ReadonlyArray<string | Uint8Array | TriggerKey> | undefined, env?: Record<string, string | undefined>): TriggerKey[] {
  const keys =
    secrets === undefined
      ? loadTriggerSecrets(env)
      : secrets.map((s, i) => (s instanceof TriggerKey ? s : new TriggerKey(s, `LeadercronModule option secrets[${i}]`)));
  const unique: TriggerKey[] = [];
  for (const k of keys) {
    if (!unique.some((u) => u.sameSecret(k))) {
      unique.push(k);
    }
  }
  return unique;
}
