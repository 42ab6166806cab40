#!/usr/bin/env bash
# Builds an OCI image layout tarball of busybox from Debian's busybox-static, with no
# registry: one uncompressed layer (/bin/busybox and its applets, /etc/passwd and group),
# an image config, a manifest and an index naming it `latest`. Import it with
#   ctr images import --base-name hull.local/busybox busybox-oci.tar   (→ hull.local/busybox:latest)
# With --scratch, the layer holds /bin/busybox alone, as a `FROM scratch` image (Kubernetes'
# pause, distroless) has no /proc, /sys, /dev, /etc or /tmp to mount on; --pause is that
# image with a command that sleeps until killed, a pod sandbox image for CRI tests.
# Usage: resources/busybox-oci.sh [--scratch|--pause] OUT.tar
set -euo pipefail

scratch=
cmd='"sh"'
case "${1:-}" in
    --scratch) scratch=1; cmd='"/bin/busybox","sh"'; shift ;;
    --pause) scratch=1; cmd='"/bin/busybox","sleep","1000000000"'; shift ;;
esac
out="${1:?usage: resources/busybox-oci.sh [--scratch|--pause] OUT.tar}"
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "resources/busybox-oci.sh: $busybox not found; apt-get install busybox-static" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
if [ -n "$scratch" ]; then
    mkdir -p "$root/bin"
    install -m 0755 "$busybox" "$root/bin/busybox"
else
    mkdir -p "$root"/{bin,etc,tmp,root,proc,sys,dev,run}
    chmod 1777 "$root/tmp"
    install -m 0755 "$busybox" "$root/bin/busybox"
    for applet in $("$busybox" --list); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
fi

blobs="$work/layout/blobs/sha256"
mkdir -p "$blobs"
# Reproducible layer: sorted names, fixed owner and time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00Z' \
    -C "$root" -cf "$work/layer.tar" .
layer_digest="$(sha256sum "$work/layer.tar" | cut -d' ' -f1)"
layer_size="$(stat -c %s "$work/layer.tar")"
mv "$work/layer.tar" "$blobs/$layer_digest"

cat > "$work/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":[$cmd],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_digest"]},"history":[{"created":"2000-01-01T00:00:00Z","created_by":"resources/busybox-oci.sh"}]}
EOF
config_digest="$(sha256sum "$work/config.json" | cut -d' ' -f1)"
config_size="$(stat -c %s "$work/config.json")"
mv "$work/config.json" "$blobs/$config_digest"

cat > "$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:$layer_digest","size":$layer_size}]}
EOF
manifest_digest="$(sha256sum "$work/manifest.json" | cut -d' ' -f1)"
manifest_size="$(stat -c %s "$work/manifest.json")"
mv "$work/manifest.json" "$blobs/$manifest_digest"

cat > "$work/layout/index.json" <<EOF
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}
EOF
printf '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='2000-01-01 00:00Z' \
    -C "$work/layout" -cf "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "$out"
