# shellcheck shell=bash
# What scripts/condor-pool and scripts/slurm-cluster share: a Debian chroot built once with mmdebstrap from the
# mirror this machine's apt uses and cached as a tarball, then unpacked and started per test session.
# The sourcing script defines log() and die() first.

# Install the host packages a build needs (mmdebstrap), only those missing.
install_packages() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
    done
    [ ${#missing[@]} -eq 0 ] && return
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian archive this machine's apt already uses (the entry serving its own release), so the chroot
# comes from the same mirror; deb822 .sources files first, then one-line .list files.
debian_mirror() {
    local release file mirror=""
    # shellcheck source=/dev/null
    release=$(. /etc/os-release && echo "$VERSION_CODENAME")
    for file in /etc/apt/sources.list.d/*.sources; do
        [ -f "$file" ] || continue
        mirror=$(awk -v release="$release" 'BEGIN { RS = "" }
            /(^|\n)Types:[^\n]*deb([ \n]|$)/ && $0 ~ "(^|\n)Suites:([^\n]* )?" release "( |\n|$)" {
                if (match($0, /(^|\n)URIs: *[^ \n]+/)) { uri = substr($0, RSTART, RLENGTH); sub(/.*URIs: */, "", uri);
                    print uri; exit } }' "$file")
        [ -n "$mirror" ] && break
    done
    if [ -z "$mirror" ]; then
        for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
            [ -f "$file" ] || continue
            mirror=$(awk -v release="$release" '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/) break;
                if ($(i + 1) == release) { print $i; exit } }' "$file")
            [ -n "$mirror" ] && break
        done
    fi
    [ -n "$mirror" ] || die "no apt source for $release in /etc/apt/sources.list{,.d}: cannot tell which mirror to use"
    echo "$mirror"
}

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (chroot, mount)"
    [ -r /proc/self/mounts ] || die "needs /proc"
}

# build_tarball SUITE PACKAGES PREFIX-HASH.tar LOG: mmdebstrap SUITE with PACKAGES into the tarball (written
# whole or not at all; PREFIX.tar and PREFIX-*.tar of older package lists are removed), the build's output in LOG.
build_tarball() {
    local suite=$1 packages=$2 tarball=$3 build_log=$4 mirror started=$SECONDS
    install_packages mmdebstrap debian-archive-keyring
    mirror=$(debian_mirror)
    mkdir -p "$(dirname "$tarball")"
    rm -f "$tarball.new"
    log "building the $suite chroot from $mirror (about a minute)"
    # sid's Release files are often past Valid-Until on snapshot mirrors; docs, man pages and locales
    # only slow down every extraction.
    mmdebstrap --mode=root --format=tar --variant=apt --components=main --include="$packages" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$tarball.new" "$mirror" >"$build_log" 2>&1 \
        || die "mmdebstrap failed, see $build_log"
    local older
    for older in "${tarball%-*}.tar" "${tarball%-*}"-*.tar; do
        [ "$older" = "$tarball" ] || rm -f "$older"
    done
    mv "$tarball.new" "$tarball"
    log "built $tarball in $((SECONDS - started)) s"
}

# Processes whose root directory is ROOT: the chroot's daemons and their jobs, and nothing else.
chroot_pids() {
    local root=$1 pid_dir
    for pid_dir in /proc/[0-9]*; do
        [ "$(readlink "$pid_dir/root" 2>/dev/null)" = "$root" ] && echo "${pid_dir#/proc/}"
    done
    return 0
}

mounts_under() {
    findmnt -rn -o TARGET | awk -v root="$1" 'index($0, root "/") == 1' | sort -r
}

# proc, and /sys and /dev as rslave bind mounts: unmounting them later never reaches the host's.
mount_system() {
    local root=$1
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --make-rslave "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --make-rslave "$root/dev"
}

unmount_system() {
    local root=$1 target
    while read -r target; do
        [ -n "$target" ] || continue
        umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done < <(mounts_under "$root")
    [ -z "$(mounts_under "$root")" ] || die "still mounted under $root: $(mounts_under "$root" | tr '\n' ' ')"
}

port_in_use() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}
