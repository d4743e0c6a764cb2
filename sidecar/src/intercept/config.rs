//! `init`'s validated settings: what to redirect, and whether to add the
//! rules, take them away or only print them.

use super::rules::{Family, Redirect};

/// Add the rules, or take them away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Install,
    Remove,
}

/// `init`'s checked flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitConfig {
    pub redirect: Redirect,
    pub mode: Mode,
    pub dry_run: bool,
    pub families: Vec<Family>,
}
