# Devices of the trimmed COLO build (./configure passes
# --without-default-devices --with-devices-x86_64=colo):
# the pc and q35 machines (q35 runs the base's migration qtests) and
# virtio-net and virtio-blk over PCI for the test guest.  Everything these
# select comes along through Kconfig.  The generic loader writes blobs
# into guest RAM at every reset, as -kernel and -dtb do on other targets:
# a COLO qtest checks that the secondary's resets do not undo the guest's
# changes to them.
CONFIG_I440FX=y
CONFIG_Q35=y
CONFIG_VIRTIO_PCI=y
CONFIG_VIRTIO_NET=y
CONFIG_VIRTIO_BLK=y
CONFIG_VGA_PCI=y
CONFIG_GENERIC_LOADER=y
