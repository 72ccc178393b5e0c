"""The snapshot manager: filesystem snapshots of VE private areas, taken in the frozen window
of a checkpoint, compared, rolled back.

    runner.py   the one place external tools run (logged, timed out, failures named)
    errors.py   FsError and its kinds (exit 3 for the CLI)
    atomic.py   metadata written atomically (temp, fsync, rename)
    pool.py     the node's embedded storage: a loop-file btrfs in the state directory
    fs/         the Filesystem interface and its backends (btrfs, LVM thin, copy), the
                factory backend_for(path), send-stream and tree comparison
    ve/         VEs: containers with their own tree, namespaces, address and private area
"""
