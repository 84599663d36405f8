//! efm agent library. See ARCHITECTURE.md for the map of modules.

pub mod datapath;
