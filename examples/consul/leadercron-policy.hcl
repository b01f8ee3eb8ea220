# Least-privilege Consul ACL policy for the leadercron sidecars of ONE
# service. Replace "orders-api" with your LEADERCRON_SERVICE (or use your
# LEADERCRON_KV_PREFIX instead of leadercron/orders-api). See docs/acl.md.
#
#   consul acl policy create -name leadercron-orders-api -rules @leadercron-policy.hcl
#   consul acl token create -description "leadercron orders-api" -policy-name leadercron-orders-api
#
# internal/e2e/acl_test.go runs the sidecar with a token that carries only
# this file, against a Consul with default_policy = "deny".

# Everything the sidecars keep in Consul lives under their prefix
# (LEADERCRON_KV_PREFIX, default leadercron/<service>):
#   leader          the lock: blocking reads, lock/release in a transaction
#   jobs/<job>/     the last claimed slot (check-and-set in the claim
#                   transaction) and the pause flag read in that transaction
#   requests/<job>  run-now requests: watched, and deleted when taken
#   history/<job>   each slot's fate, appended with a check-and-set
# The trailing slash matters: without it the rule would also cover
# leadercron/orders-api-2/ and any other service whose name starts the same.
key_prefix "leadercron/orders-api/" {
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
