#!/usr/bin/env bash
# Builds the local example image without any registry: a root filesystem with /bin/busybox
# (from Debian's busybox-static) and a link for every applet, packed with tar and loaded
# with `podman import` as localhost/busybox:latest, and tagged with the name the examples
# use, registry.kat.local/busybox:latest. A single node finds that name here, in its local
# storage; scripts/dev-cluster pushes the image into its own registry, from which its nodes
# pull it under the same name.
#
#   scripts/build-images.sh [--force]
#
# The image goes into the storage of whoever runs this (root or a rootless user; any
# `podman` global options can be given in PODMAN, e.g. PODMAN="podman --root R --runroot RR").
# The root filesystem tarball is kept at $KAT_IMAGE_DIR/busybox-rootfs.tar (default
# /usr/local/share/kat/images when root, ~/.cache/kat/images otherwise), so other users and
# other Podman stores can load the same image with:
#   podman import --change 'CMD ["/bin/sh"]' busybox-rootfs.tar localhost/busybox:latest
set -euo pipefail

IMAGE=localhost/busybox:latest
ALIASES=(registry.kat.local/busybox:latest)
read -r -a PODMAN_CMD <<<"${PODMAN:-podman}"
force=0
[[ ${1:-} == --force ]] && force=1

log() { printf '[images] %s\n' "$*" >&2; }
die() { printf '[images] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ $(id -u) -eq 0 ]]; then
  IMAGE_DIR=${KAT_IMAGE_DIR:-/usr/local/share/kat/images}
else
  IMAGE_DIR=${KAT_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kat/images}
fi
TARBALL=$IMAGE_DIR/busybox-rootfs.tar
SYSTEM_TARBALL=/usr/local/share/kat/images/busybox-rootfs.tar
# A rootless user reuses the tarball root already built, if there is one.
if [[ $(id -u) -ne 0 && -z ${KAT_IMAGE_DIR:-} && $force == 0 && -r $SYSTEM_TARBALL ]]; then
  TARBALL=$SYSTEM_TARBALL
fi

tag_aliases() {
  local alias
  for alias in "${ALIASES[@]}"; do
    "${PODMAN_CMD[@]}" tag "$IMAGE" "$alias"
  done
}

if ((!force)) && "${PODMAN_CMD[@]}" image exists "$IMAGE" 2>/dev/null && [[ -s $TARBALL ]]; then
  id=$("${PODMAN_CMD[@]}" image inspect --format '{{.Id}}' "$IMAGE")
  stale=0
  for alias in "${ALIASES[@]}"; do
    [[ $("${PODMAN_CMD[@]}" image inspect --format '{{.Id}}' "$alias" 2>/dev/null) == "$id" ]] || stale=1
  done
  if ((stale)); then
    tag_aliases
    log "$IMAGE: already present; tagged ${ALIASES[*]}"
  else
    log "$IMAGE (${ALIASES[*]}): already present"
  fi
  exit 0
fi

BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing (apt-get install busybox-static)"
# Debian's busybox (dynamic) package also installs /bin/busybox; only the static one works
# inside an image without libc.
if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
  die "$BUSYBOX is not statically linked (apt-get install busybox-static)"
fi

if ((force)) || [[ ! -s $TARBALL ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  root=$work/rootfs
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,proc,sys,dev,run,var/www,var/log}
  install -m 0755 "$BUSYBOX" "$root/bin/busybox"
  # Every applet at its usual place (bin/sh, usr/bin/wget, sbin/ifconfig, ...) and, so
  # that plain names always work, also in /bin.
  while read -r applet; do
    [[ -n $applet && $applet != linuxrc ]] || continue
    name=${applet##*/}
    [[ $name == busybox ]] && continue
    [[ -e $root/$applet || -L $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
    [[ -e $root/bin/$name || -L $root/bin/$name ]] || ln -s busybox "$root/bin/$name"
  done < <("$BUSYBOX" --list-full)
  mkdir -p "$root/tmp" "$root/var/tmp"
  chmod 1777 "$root/tmp" "$root/var/tmp"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
  : >"$root/etc/hosts"
  : >"$root/etc/resolv.conf"
  mkdir -p "$IMAGE_DIR"
  tar --numeric-owner --owner=0 --group=0 -C "$root" -cf "$TARBALL.tmp" .
  mv -f "$TARBALL.tmp" "$TARBALL"
  chmod 0644 "$TARBALL"
  log "root filesystem packed: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

"${PODMAN_CMD[@]}" import -q \
  --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message 'KAT local busybox image (scripts/build-images.sh)' \
  "$TARBALL" "$IMAGE" >/dev/null
tag_aliases
log "$IMAGE (${ALIASES[*]}): imported ($("${PODMAN_CMD[@]}" image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-12))"
