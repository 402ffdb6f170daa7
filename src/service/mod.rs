//! `thinsnap serve`: the containerd proxy snapshotter.
