//! efm agent library. See ARCHITECTURE.md for the map of modules.

pub mod admin;
pub mod agent;
pub mod cli;
pub mod logging;
pub mod notify;
pub mod config;
pub mod coordination;
pub mod datapath;
pub mod detector;
pub mod files;
pub mod ha;
pub mod health;
pub mod heartbeat;
pub mod keyfile;
pub mod lifecycle;
pub mod custom_monitor;
pub mod localdb;
pub mod operator;
pub mod postgres;
pub mod report;
pub mod scripts;
pub mod secret;
pub mod sessions;
pub mod status;
pub mod users;
pub mod vip;
