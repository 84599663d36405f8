//! Test helper: a stand-in for the agent's datapath lifecycle in its own process, so tests can
//! SIGKILL it and start it again.
//!
//! `efm-dp-hold NETNS_PATH PIN_DIR IFACE SIDE [fence-reset]` enters the namespace, opens the
//! datapath (re-using pinned state), configures side `a` or `b` of the two-node bed when the maps
//! are new, arms the fence in reset mode if asked, prints one line
//! `READY attachment=<how> reused=<bool>` and then sleeps until killed.

use std::io::Write as _;

use efm_agent::datapath::{Datapath, ModeChoice};
use efm_common::maps::{FENCE_FENCED, FENCE_RESET};
use efm_tests::{configure_side, enter_netns, Fixture, Side};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert!(args.len() >= 5, "usage: efm-dp-hold NETNS_PATH PIN_DIR IFACE a|b [fence-reset]");
    enter_netns(&args[1]);
    let side = Side::parse(&args[4]).expect("side is a or b");
    let mut dp = Datapath::open(std::path::Path::new(&args[2]), &[args[3].as_str()], ModeChoice::Auto)
        .unwrap_or_else(|e| panic!("opening the datapath: {e}"));
    if !dp.reused_maps() {
        configure_side(&mut dp, side);
        dp.set_fence(&Fixture::base_fence()).expect("fence");
    }
    if args.get(5).map(String::as_str) == Some("fence-reset") {
        dp.set_fence(&efm_common::maps::FenceState { flags: FENCE_FENCED | FENCE_RESET, ..Fixture::base_fence() })
            .expect("fence");
    }
    let att = dp.attachments().first().map(|(_, a)| a.to_string()).unwrap_or_default();
    println!("READY attachment={att} reused={}", dp.reused_maps());
    std::io::stdout().flush().expect("stdout");
    loop {
        std::thread::park();
    }
}
