# syntax=docker/dockerfile:1
#
# leadercron sidecar image: a static binary on distroless/static, running as
# the image's nonroot user (65532). Multi-arch without emulation:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always) -t REGISTRY/leadercron:TAG --push .
#
# The build flags live in scripts/build.sh only; deploy_test.go runs the
# same script and checks that the result is static.

# Keep in step with go.mod's go line (the toolchain the tests run on).
ARG GO_VERSION=1.26.8

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS TARGETARCH
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH VERSION=$VERSION GOTOOLCHAIN=local \
    ./scripts/build.sh -o /out/leadercron

# Pin by digest in production (gcr.io/distroless/static-debian12:nonroot@sha256:...).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/leadercron /leadercron
USER 65532:65532
# No shell in this image: every command is exec form. Docker and Compose use
# this HEALTHCHECK; ECS, Kubernetes and Nomad ignore it and declare their own
# (ecs-task-definition.json, examples/kubernetes, examples/nomad).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/leadercron", "healthcheck"]
# No CMD: the binary with no arguments runs the sidecar.
ENTRYPOINT ["/leadercron"]
