# leadercron on Nomad (>= 1.4 for Nomad Variables; docker driver).
# See docs/deploy.md for the time budget and README.md for the variables.
#
# SHUTDOWN ORDER RELIED ON
#
# Nomad stops a group's tasks in this order: after the group's
# shutdown_delay, the task with leader = true; then the other main tasks;
# then lifecycle sidecars. The leadercron task is the group's LEADER, so on
# a stop, a deployment or a reschedule it gets its kill_signal (SIGTERM)
# first, while the app still runs:
#
#   1. leadercron gets SIGTERM: it stops scheduling, waits for triggers in
#      flight, polls the app's POST /drain until {"running": 0}, releases
#      the lock (a standby in another allocation takes over within a
#      second), destroys its session and exits 0.
#   2. Only then does Nomad signal the app, which runs no jobs any more.
#
# leadercron must NOT be a lifecycle { hook = "prestart" sidecar = true }
# task: sidecars are stopped LAST, after the app, so the drain would find
# the app gone. Nomad has no preStop hook to make up for that.
#
# The other side of it: if the leadercron task fails for good, Nomad stops
# the whole group, app included, and reschedules the allocation (the
# group's reschedule policy; for a service job by default without limit,
# 30 s apart and doubling). "For good" is what the restart block below
# defines: mode = "fail" gives up after 5 restarts within 5 minutes and
# marks the task failed, which stops its siblings. (mode = "delay" would
# never give up: it waits out the interval and tries again, so the app
# would keep running without a scheduler beside it and the group would
# never be replaced.) The sidecars of the other allocations keep the
# fleet's schedule going meanwhile.
#
# kill_timeout is the time between SIGTERM and SIGKILL. Nomad silently caps
# it at the client's max_kill_timeout (client { max_kill_timeout = ... },
# default 30s), so raise that on the clients first when the drain needs
# more than about 25 s.

job "orders-api" {
  type = "service"

  group "api" {
    count = 3

    # Shared network namespace: the tasks reach each other on 127.0.0.1.
    network {
      mode = "bridge"
      port "http" { to = 8080 }
    }

    task "app" {
      driver = "docker"
      config {
        image = "registry.example.com/orders-api:1.0.0"
        ports = ["http"]
        readonly_rootfs = true
      }
      # The app's own shutdown after the drain; it runs no jobs by then.
      kill_timeout = "15s"

      # The job contract (POST /jobs/*, /drain) on a loopback-only listener
      # of its own, not on the "http" port; the app refuses triggers not
      # signed with the secret below.
      env {
        LEADERCRON_APP_LISTEN          = "127.0.0.1:8081"
        LEADERCRON_TRIGGER_SECRET_FILE = "${NOMAD_SECRETS_DIR}/trigger-secret"
      }
      template {
        destination = "${NOMAD_SECRETS_DIR}/trigger-secret"
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/orders-api" }}{{ .trigger_secret }}{{ end }}
        EOT
      }
    }

    task "leadercron" {
      # Stopped first; see the header.
      leader = true
      driver = "docker"

      config {
        image           = "ghcr.io/leadercron/leadercron:0.1.0" # pin by digest in production
        readonly_rootfs = true
        cap_drop        = ["all"]
        # The image's ENTRYPOINT runs the sidecar; it runs as 65532 (nonroot).
      }

      # LEADERCRON_DRAIN_TIMEOUT (45 s) + release and session destroy
      # (< 1 s) + margin. Needs max_kill_timeout >= 60s on the clients.
      kill_timeout = "60s"
      kill_signal  = "SIGTERM"

      # Give up after 5 restarts within 5 minutes: the task then fails, and
      # Nomad stops the group and reschedules it (see the header).
      restart {
        attempts = 5
        interval = "5m"
        delay    = "5s"
        mode     = "fail"
      }

      env {
        LEADERCRON_SERVICE         = "orders-api"
        LEADERCRON_ID              = "${NOMAD_ALLOC_ID}"
        # The app's private trigger port; every trigger and drain is signed.
        LEADERCRON_APP_URL             = "http://127.0.0.1:8081"
        LEADERCRON_TRIGGER_SECRET_FILE = "${NOMAD_SECRETS_DIR}/trigger-secret"
        # Nomad starts both tasks together: stay out of elections until
        # the app answers its health URL.
        LEADERCRON_APP_HEALTH_URL  = "http://127.0.0.1:8080/healthz"
        LEADERCRON_LISTEN          = "127.0.0.1:9090"
        LEADERCRON_DRAIN_TIMEOUT   = "45s"
        # Every job's deadline (timeout=, 10m by default) below the drain:
        # a run still going when the drain gives up is cut off when Nomad
        # stops the app. A job that needs longer needs a longer drain, and
        # kill_timeout and the clients' max_kill_timeout with it.
        LEADERCRON_TRIGGER_TIMEOUT = "40s"
        LEADERCRON_JOB_SEND_REPORT = "0 9 * * MON-FRI tz=Europe/Berlin"
        LEADERCRON_JOB_SYNC_PRICES = "*/5 * * * *"
        # Nomad clients usually run a Consul agent; reach it from the
        # bridge network through the host's address. The agent listens on
        # 127.0.0.1 only by default (client_addr), and 127.0.0.1 inside the
        # bridge network is the allocation's own: set client_addr on every
        # client's Consul agent to include this address as well, e.g.
        #   client_addr = "127.0.0.1 {{ GetPrivateIP }}"
        # and check that it is the one Nomad fingerprints
        # (nomad node status -self -verbose | grep unique.network.ip-address).
        # The agent's HTTP API is then reachable from the network: keep ACLs
        # on with default_policy = "deny", and firewall port 8500 to the host
        # or use HTTPS (port 8501, CONSUL_HTTP_ADDR = "https://...:8501" and
        # CONSUL_CACERT).
        CONSUL_HTTP_ADDR = "${attr.unique.network.ip-address}:8500"
        GOMEMLIMIT       = "64MiB"
      }

      # The Consul token (a token with examples/consul/leadercron-policy.hcl
      # only), from Nomad Variables, which a task can read under
      # nomad/jobs/<job> without extra policy:
      #   nomad var put nomad/jobs/orders-api consul_token=<secret id> \
      #     trigger_secret="$(openssl rand -hex 32)"
      # The rendered file lives in the task's secrets dir, not in the image,
      # and env = true turns it into environment variables. (With Nomad >= 1.7
      # workload identities and a Consul auth method, the token can come from
      # the task's identity instead; bind it to the same policy.)
      template {
        destination = "${NOMAD_SECRETS_DIR}/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/orders-api" }}CONSUL_HTTP_TOKEN={{ .consul_token }}{{ end }}
        EOT
      }
      template {
        destination = "${NOMAD_SECRETS_DIR}/trigger-secret"
        change_mode = "restart"
        perms       = "0400"
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs/orders-api" }}{{ .trigger_secret }}{{ end }}
        EOT
      }

      # Nomad ignores the image's HEALTHCHECK. A script check runs the
      # subcommand inside the container (the image has no shell).
      service {
        name     = "orders-api-leadercron"
        provider = "consul"
        check {
          type     = "script"
          name     = "leadercron healthz"
          command  = "/leadercron"
          args     = ["healthcheck"]
          interval = "15s"
          timeout  = "5s"
        }
      }

      resources {
        cpu    = 50
        memory = 96
      }
    }
  }
}
