"""VEs: containers with their own process tree, namespaces, address and private area.

config.py     a VE's configuration (TOML), the VEID rule
node.py       the node's state directory: configs, private areas, dump files
idmap.py      machine-wide id ranges of the VEs that contain their root (subuid/subgid)
runtime.py    a running VE on this host: the one name of its cgroup, lock and state files
              (ve-<VEID>) and the run-dir store of its runtime facts
rootfs.py     the minimal root filesystem of a new VE (host and busybox templates), the
              shift of a private area's owners between id ranges
boot.py       what runs inside a starting VE: mounts, pivot_root, hostname, then its init;
              for a VE that contains its root, the order of its namespaces (contain)
seccomp.py    the seccomp filter of a VE that contains its root
net.py        its network: veth pair, addresses, routes, the blackhole holding its address
lifecycle.py  VEManager: create, set, start, stop, exec, status, list, destroy
stages.py     VeStages: the VE stages of chkpnt and restore (cpt.stages.Stage, Stages)
fssnap.py     the private area's snapshot in a dump's frozen window, and restore's proof
hooks.py      SnapshotHooks: what this layer tells the keeper of those snapshots, and asks
              of it (snapshot/ implements it with its catalog)

It stands on cpt/ (the engine) and storage/ (filesystems, the pool); it never imports
snapshot/.  A new VE feature goes into the module of its concern above (a new network
setting: config.py, net.py, boot.py's setup inside); what it needs at chkpnt or restore
goes into stages.py.
"""
