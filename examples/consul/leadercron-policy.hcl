# Least-privilege Consul ACL policy for the leadercron sidecars of ONE
# service. Replace "orders-api" with your LEADERCRON_SERVICE (or use your
# LEADERCRON_KV_PREFIX instead of leadercron/orders-api). See docs/acl.md.
#
#   consul acl policy create -name leadercron-orders-api -rules @leadercron-policy.hcl
#   consul acl token create -description "leadercron orders-api" -policy-name leadercron-orders-api
#
# internal/e2e/acl_test.go runs the sidecar with a token that carries only
# this file, against a Consul with default_policy = "deny".

# The lock key: watched with blocking reads, taken and released in a
# transaction with the session.
key "leadercron/orders-api/leader" {
  policy = "write"
}

# Per-job state: <prefix>/jobs/<job>/last, moved forward by a check-and-set
# in the slot-claim transaction.
key_prefix "leadercron/orders-api/jobs/" {
  policy = "write"
}

# Sessions: create (TTL-only, no checks), renew and destroy. Consul checks
# session rights against the node the session is bound to, which is the
# agent or server that answers the request. With a local client agent you
# can name its node instead of "" (session "<node-name>" { ... }); when the
# sidecars reach the servers directly, as on Fargate, any server may answer.
session_prefix "" {
  policy = "write"
}
