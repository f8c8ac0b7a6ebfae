#!/usr/bin/env bash
# Runs a shell script on an emulated Intel Sapphire Rapids: AVX-512 F/BW/VL/DQ, VNNI, BF16 and
# AMX-TILE/INT8/BF16, for checking the kernels of CPUs this machine is not. Bochs 3.0 (Debian's
# source, sha256-checked, with the fixes in bochs_fixes.py) boots Debian 13's Linux kernel
# from an initramfs that holds busybox, the files named (at the same absolute paths, with the
# shared libraries their executables need) and the script. The script runs as root in this
# repository's directory; its exit status is this command's.
#
#   bash scripts/emu/sapphire.sh GUEST_SCRIPT [FILE_OR_DIR...]
#
# It checks correctness only: the emulator runs every instruction in software, so no timing
# in the guest means anything. The first run installs what it lacks (apt-get: g++, make,
# xorriso, cpio, isolinux, busybox-static, the Bochs BIOS) and builds Bochs (about 1.5 minutes
# on 2 cores) into $MNV2_EMU_DIR (default target/emu); later runs reuse it. Booting takes
# about 20 seconds. MNV2_EMU_TIMEOUT (seconds, default 3600) bounds a run; MNV2_EMU_MEGS
# (default 2048) is the guest's memory.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
here=$root/scripts/emu
die() { echo "sapphire: $*" >&2; exit 1; }
(($# >= 1)) || die "usage: scripts/emu/sapphire.sh GUEST_SCRIPT [FILE_OR_DIR...]"
guest=$1
shift
[ -f "$guest" ] || die "$guest: no such guest script"
emu=${MNV2_EMU_DIR:-$root/target/emu}
mkdir -p "$emu"
emu=$(cd "$emu" && pwd)

# What the build and the boot need, installed when missing.
pkgs=()
command -v g++ >/dev/null || pkgs+=(g++)
command -v make >/dev/null || pkgs+=(make)
command -v xorriso >/dev/null || pkgs+=(xorriso)
command -v cpio >/dev/null || pkgs+=(cpio)
[ -f /usr/lib/ISOLINUX/isolinux.bin ] || pkgs+=(isolinux)
[ -f /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || pkgs+=(syslinux-common)
[ -f /usr/share/bochs/BIOS-bochs-latest ] || pkgs+=(bochsbios)
[ -f /usr/share/vgabios/vgabios.bin ] || pkgs+=(vgabios)
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then pkgs+=(busybox-static); fi
if ((${#pkgs[@]})); then
  echo "sapphire: installing ${pkgs[*]}"
  apt-get install -y -q "${pkgs[@]}" >"$emu/apt.log" 2>&1 || { tail -5 "$emu/apt.log" >&2; die "apt-get install failed"; }
fi

# Downloads from Debian's archive, and their checks.
base=http://deb.debian.org/debian
fetch() { curl -fsSL --retry 3 -o "$2" "$1" || die "could not fetch $1"; }
sha_ok() { echo "$1  $2" | sha256sum -c --quiet >/dev/null 2>&1; }

# Bochs 3.0 from Debian's source package, fixed, built once per version of the fixes.
tarball=bochs_3.0+dfsg.orig.tar.xz
sha=78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b
stamp=$(sha256sum "$here/bochs_fixes.py" | cut -c1-16)
bochs=$emu/bochs-$stamp/bochs
if ! [ -x "$bochs" ]; then
  if ! sha_ok "$sha" "$emu/$tarball"; then
    echo "sapphire: fetching $tarball"
    fetch "$base/pool/main/b/bochs/$tarball" "$emu/$tarball.part"
    sha_ok "$sha" "$emu/$tarball.part" || die "$tarball: sha256 mismatch"
    mv "$emu/$tarball.part" "$emu/$tarball"
  fi
  src=$emu/bochs-$stamp
  rm -rf "$src" "$emu/bochs-3.0"
  tar -xf "$emu/$tarball" -C "$emu"
  mv "$emu/bochs-3.0" "$src"
  python3 "$here/bochs_fixes.py" "$src"
  echo "sapphire: building Bochs (log: $src/build.log)"
  (cd "$src" && ./configure --enable-x86-64 --enable-cpu-level=6 --enable-avx --enable-evex --enable-amx \
    --enable-all-optimizations --enable-pci --with-nogui --disable-docbook --enable-usb=no \
    --enable-sb16=no --enable-es1370=no --enable-ne2000=no && make -j"$(nproc)") >"$src/build.log" 2>&1 ||
    { tail -20 "$src/build.log" >&2; die "the Bochs build failed"; }
fi

# Debian 13's kernel (6.12; Debian 12's 6.1 hangs early in boot on this emulator), its vmlinuz
# only, through the signed chain apt would use: InRelease checked by gpgv against the
# installed Debian archive keyring, then Packages.xz and the package by their SHA256.
vmlinuz=$(ls "$emu"/vmlinuz-* 2>/dev/null | head -1 || true)
if [ -z "$vmlinuz" ]; then
  echo "sapphire: fetching Debian 13's kernel"
  fetch "$base/dists/trixie/InRelease" "$emu/InRelease"
  gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg "$emu/InRelease" >/dev/null 2>&1 ||
    die "trixie's InRelease: no good signature from the Debian archive keyring"
  psha=$(awk '/^SHA256:/ {f = 1; next} /^[A-Za-z]/ {f = 0} f && $3 == "main/binary-amd64/Packages.xz" {print $1}' "$emu/InRelease")
  fetch "$base/dists/trixie/main/binary-amd64/Packages.xz" "$emu/Packages.xz"
  sha_ok "$psha" "$emu/Packages.xz" || die "trixie's Packages.xz: sha256 mismatch"
  read -r kname kfile ksha < <(xz -dc "$emu/Packages.xz" | awk '
    /^Package: / {p = ($2 ~ /^linux-image-[0-9][^ ]*-amd64-unsigned$/ && $2 !~ /-(rt|cloud)-/) ? $2 : ""}
    p && /^Filename: / {f = $2}
    p && /^SHA256: / {print p, f, $2; exit}')
  [ -n "${ksha:-}" ] || die "trixie's Packages.xz lists no linux-image-*-amd64-unsigned"
  fetch "$base/$kfile" "$emu/kernel.deb"
  sha_ok "$ksha" "$emu/kernel.deb" || die "$kname: sha256 mismatch"
  dpkg-deb --fsys-tarfile "$emu/kernel.deb" | tar -x -O --wildcards './boot/vmlinuz-*' >"$emu/vmlinuz.part"
  vmlinuz=$emu/vmlinuz-${kname#linux-image-}
  mv "$emu/vmlinuz.part" "$vmlinuz"
  rm -f "$emu/kernel.deb" "$emu/Packages.xz" "$emu/InRelease"
fi
kpkg=$(basename "$vmlinuz")

# The initramfs: busybox, the files with their libraries, the guest script, an init.
run=$(mktemp -d "$emu/run.XXXXXX")
# Kept when the run fails: the guest's console (kernel log included) and Bochs's log.
trap 'if [ "${ok:-0}" = 1 ]; then rm -rf "$run"; else cp "$run/serial.out" "$emu/last-console.log" 2>/dev/null; cp "$run/bochs.log" "$emu/last-bochs.log" 2>/dev/null; rm -rf "$run"; echo "sapphire: console kept in $emu/last-console.log" >&2; fi' EXIT
fs=$run/fs
mkdir -p "$fs"/{bin,dev,proc,sys,tmp}
cp /bin/busybox "$fs/bin/"
for a in sh mount cat echo ls poweroff sleep grep sed cut tr timeout env mkdir; do ln -s busybox "$fs/bin/$a"; done
copy() { cp -rL --parents "$1" "$fs/"; }
for f in "$@"; do
  [ -e "$f" ] || die "$f: no such file"
  f=$(realpath -s "$f")
  copy "$f"
  while IFS= read -r e; do
    if [ "$(head -c4 "$e" | tail -c3)" = ELF ]; then
      ldd "$e" 2>/dev/null | grep -o '/[^ ]*' | while IFS= read -r lib; do
        [ -e "$fs$lib" ] || cp -L --parents "$lib" "$fs/"
      done
    fi
  done < <(find "$f" -type f -perm -u+x)
done
# The repository's directories (empty but for the files named), so that paths built from a
# test's CARGO_MANIFEST_DIR (crates/x/../..) resolve.
(cd "$root" && find . \( -path ./target -o -path ./.git \) -prune -o -type d -print) |
  while IFS= read -r d; do mkdir -p "$fs$root/$d"; done
cp "$guest" "$fs/guest.sh"
cat >"$fs/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "sapphire: guest CPU: \$(grep -o 'amx[a-z_0-9]*\|avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
cd "$root"
sh /guest.sh
echo "sapphire: guest exit \$?"
sleep 2
poweroff -f
EOF
chmod +x "$fs/init"
mkdir -p "$run/iso/isolinux"
(cd "$fs" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$run/iso/initrd.gz")
cp "$vmlinuz" "$run/iso/vmlinuz"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$run/iso/isolinux/"
# no5lvl: 4-level paging (with 5-level, Bochs's RSM rejects the CR4 it restores and stops);
# lsm=capability: the default security modules hung Debian 12's kernel here; waitpkg off: its
# delays spin instead of using the emulated TPAUSE.
cat >"$run/iso/isolinux/isolinux.cfg" <<'EOF'
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz console=ttyS0,115200 nokaslr mitigations=off lsm=capability tsc=reliable no5lvl clearcpuid=waitpkg
EOF
xorriso -as mkisofs -quiet -o "$run/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot \
  -boot-load-size 4 -boot-info-table "$run/iso" 2>/dev/null
cat >"$run/bochsrc" <<EOF
megs: ${MNV2_EMU_MEGS:-2048}
cpu: model=sapphire_rapids, count=1, ips=200000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
display_library: nogui
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-master: type=cdrom, path=$run/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$run/serial.out
log: $run/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
clock: sync=none
EOF

echo "sapphire: booting ($(du -h "$run/iso/initrd.gz" | cut -f1) initramfs, $kpkg)"
touch "$run/serial.out"
timeout "${MNV2_EMU_TIMEOUT:-3600}" "$bochs" -q -f "$run/bochsrc" >"$run/bochs.out" 2>&1 &
pid=$!
# The guest's lines as they come (the kernel's own, which start with a timestamp, left out).
# Bochs writes the console in blocks, so they come a few lines at a time.
t0=$SECONDS
tail -n +1 -f --pid=$pid "$run/serial.out" | sed -u 's/\r$//' | grep --line-buffered -v '^\[ *[0-9]*\.[0-9]*\]' || true
wait $pid && brc=0 || brc=$?
status=$(tr -d '\r' <"$run/serial.out" | sed -n 's/^sapphire: guest exit \([0-9]*\)$/\1/p' | tail -1)
if [ -z "$status" ]; then
  ((brc == 124)) && die "the emulator ran past MNV2_EMU_TIMEOUT=${MNV2_EMU_TIMEOUT:-3600} s"
  grep -v 'RDMSR\|WRMSR' "$run/bochs.log" | tail -5 >&2 || true
  die "the emulator stopped (status $brc) without the guest's exit status"
fi
echo "sapphire: the emulator ran $((SECONDS - t0)) s"
ok=1
exit "$status"
