"""Where the test bed finds its pieces: the build, QEMU, firmware, the guest.

Everything is derived from the environment so that the harness can run
against any build directory:

  COLO_BUILD_DIR   build directory (default: <repo>/build, the repo being
                   found relative to this file)
  COLO_ACCEL       QEMU accelerator (default: tcg)
  COLO_QEMU        QEMU binary (default: $COLO_BUILD_DIR/qemu/qemu-system-x86_64)
  COLO_GUEST_DIR   guest images (default: $COLO_BUILD_DIR/guest)

Importing this module puts QEMU's own Python package (the QMP client) of the
staged source tree on sys.path.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD_DIR = os.path.abspath(os.environ.get("COLO_BUILD_DIR") or
                            os.path.join(REPO, "build"))
QEMU_PYTHON = os.path.join(BUILD_DIR, "src", "python")
QEMU_BIN = os.environ.get("COLO_QEMU") or os.path.join(
    BUILD_DIR, "qemu", "qemu-system-x86_64")
GUEST_DIR = os.environ.get("COLO_GUEST_DIR") or os.path.join(BUILD_DIR, "guest")
ACCEL = os.environ.get("COLO_ACCEL") or "tcg"
PYTHON = "/usr/bin/python3"

if QEMU_PYTHON not in sys.path:
    sys.path.insert(0, QEMU_PYTHON)


class SetupError(Exception):
    """The bed cannot run: something it needs is missing."""


def _find_file(root, name):
    """First file called NAME below ROOT (sorted walk), or None."""
    if not os.path.isdir(root):
        return None
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if name in filenames:
            return os.path.join(dirpath, name)
    return None


def firmware_args():
    """The -L options for QEMU (firmware search path), in search order.

    SeaBIOS comes from Debian's seabios package, the iPXE option ROM of
    virtio-net (efi-virtio.rom) from ipxe-qemu, and linuxboot_dma.bin (needed
    by -kernel on the pc machine) from QEMU's own build
    (pc-bios/optionrom, built only when configure found a 32-bit capable
    compiler, i.e. gcc-multilib).  This is the one place to adjust.
    """
    dirs = ["/usr/share/seabios"]
    rom = _find_file(os.path.join(BUILD_DIR, "qemu"), "linuxboot_dma.bin")
    if rom is None:
        raise SetupError(
            "linuxboot_dma.bin not found below %s/qemu: QEMU's option ROMs "
            "were not built (QEMU's configure needs gcc-multilib to build "
            "pc-bios/optionrom; re-run configure after installing it)"
            % BUILD_DIR)
    dirs.append(os.path.dirname(rom))
    dirs.append("/usr/lib/ipxe/qemu")
    args = []
    for d in dirs:
        args += ["-L", d]
    return args


def qemu_binary():
    if not os.access(QEMU_BIN, os.X_OK):
        raise SetupError("QEMU binary %s is missing (build it first: make)"
                         % QEMU_BIN)
    return QEMU_BIN


def guest_images():
    """(vmlinuz, initrd.img) of the test guest; SetupError if not built."""
    kernel = os.path.join(GUEST_DIR, "vmlinuz")
    initrd = os.path.join(GUEST_DIR, "initrd.img")
    missing = [p for p in (kernel, initrd) if not os.path.isfile(p)]
    if missing:
        raise SetupError(
            "test guest not built: missing %s (build it with "
            "tests/guest/build-guest.sh %s)" % (", ".join(missing), GUEST_DIR))
    return kernel, initrd


def tool(name):
    """A tool of the build next to the QEMU binary (qemu-img, qemu-io) or
    of the guest's (colo-disk-verify); SetupError if not built."""
    for d in (os.path.dirname(QEMU_BIN), GUEST_DIR):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    raise SetupError("%s is missing (build it first: make)" % name)
