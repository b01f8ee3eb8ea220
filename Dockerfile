# syntax=docker/dockerfile:1.28.0@sha256:bb22d9815c728170f72750f4e5b0d672e06176142e1d602c7e66c050100b7e5b
#
# leadercron sidecar image: a static binary on distroless/static, running as
# the image's nonroot user (65532). Multi-arch without emulation:
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(git describe --tags --always) -t REGISTRY/leadercron:TAG --push .
#
# The build flags live in scripts/build.sh only; deploy_test.go runs the
# same script and checks that the result is static.
#
# PINNED BY DIGEST: the syntax frontend above and both base images below.
# A tag can be re-pushed; a digest cannot, so the same Dockerfile builds
# from the same bytes until someone changes a line here. Each digest is the
# image's multi-arch index, so one pin serves amd64 and arm64 builders and
# targets; the tag beside it only says what it is (BuildKit pulls by the
# digest). Pinned 2026-11-30 without registry access, from the newest public
# records of these tags (2026-09-30; docker/dockerfile 1.28.0 is a release
# tag): resolve them again before the first release. To update, for each:
#
#   docker buildx imagetools inspect docker/dockerfile:1          # the 1.x it points at, and its Digest:
#   docker buildx imagetools inspect golang:1.26.8-bookworm
#   docker buildx imagetools inspect gcr.io/distroless/static-debian12:nonroot
#
# and write the "Digest:" line it prints (the index, not a per-platform
# manifest) after the tag. The golang tag must name go.mod's go version (the
# toolchain the tests run on; GOTOOLCHAIN=local refuses another), and
# deploy_test.go checks that and that every image is pinned.

FROM --platform=$BUILDPLATFORM golang:1.26.8-bookworm@sha256:a688600ca24f8a4d3ca77f95b0dd40704a9fc787c826660eb7ba0b641b8b175d AS build
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

FROM gcr.io/distroless/static-debian12:nonroot@sha256:afa5c872c891853ca7fcf1f12c3edb23f7eeef36189728842dd51042ff57f7ab
COPY --from=build /out/leadercron /leadercron
USER 65532:65532
# No shell in this image: every command is exec form. Docker and Compose use
# this HEALTHCHECK; ECS, Kubernetes and Nomad ignore it and declare their own
# (ecs-task-definition.json, examples/kubernetes, examples/nomad).
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/leadercron", "healthcheck"]
# No CMD: the binary with no arguments runs the sidecar.
ENTRYPOINT ["/leadercron"]
