//! Runs a [`Plan`] through `iptables`/`ip6tables`, printing each command as
//! it is applied. Idempotent: our chains are created when missing and
//! flushed and refilled otherwise, and the jumps into them are added only
//! when absent, so a second run leaves `iptables-save` as the first did.

use std::io::Write;
use std::process::Command;

use super::config::{InitConfig, Mode};
use super::rules::{CHAINS, Plan, chain_args};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot run {program} (is the iptables package installed?): {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr} (init needs root, or CAP_NET_ADMIN and CAP_NET_RAW)")]
    Failed { command: String, stderr: String },
    #[error("cannot write the rules out: {0}")]
    Output(std::io::Error),
}

/// Applies (or with `dry_run` only prints) `cfg`'s rules, for each family.
pub fn run_init(cfg: &InitConfig, out: &mut dyn Write) -> Result<(), InitError> {
    for family in &cfg.families {
        let plan = Plan::new(&cfg.redirect, *family);
        let ipt = Iptables {
            program: family.program(),
        };
        if cfg.dry_run {
            let cmds = match cfg.mode {
                Mode::Install => plan.install_commands(),
                Mode::Remove => remove_commands(&plan),
            };
            for c in cmds {
                print(out, ipt.program, &c)?;
            }
            continue;
        }
        match cfg.mode {
            Mode::Install => install(&ipt, &plan, out)?,
            Mode::Remove => remove(&ipt, &plan, out)?,
        }
    }
    Ok(())
}

fn install(ipt: &Iptables, plan: &Plan, out: &mut dyn Write) -> Result<(), InitError> {
    // A chain that exists is flushed and refilled rather than compared:
    // the result is the same rule list either way.
    for chain in CHAINS {
        let op = if ipt.succeeds(&chain_args("-S", chain))? {
            "-F"
        } else {
            "-N"
        };
        ipt.apply(&chain_args(op, chain), out)?;
    }
    for rule in &plan.rules {
        ipt.apply(&rule.args("-A"), out)?;
    }
    for jump in &plan.jumps {
        if !ipt.succeeds(&jump.args("-C"))? {
            ipt.apply(&jump.args("-A"), out)?;
        }
    }
    Ok(())
}

fn remove(ipt: &Iptables, plan: &Plan, out: &mut dyn Write) -> Result<(), InitError> {
    for jump in &plan.jumps {
        // Every copy (a crashed run may have left two), boundedly.
        for _ in 0..16 {
            if !ipt.succeeds(&jump.args("-C"))? {
                break;
            }
            ipt.apply(&jump.args("-D"), out)?;
        }
    }
    // Flushed before any is deleted: our chains jump to each other.
    let mut present = Vec::new();
    for chain in CHAINS {
        if ipt.succeeds(&chain_args("-S", chain))? {
            ipt.apply(&chain_args("-F", chain), out)?;
            present.push(chain);
        }
    }
    for chain in present {
        ipt.apply(&chain_args("-X", chain), out)?;
    }
    Ok(())
}

/// What `--remove --dry-run` prints: the removal of everything `init` adds.
fn remove_commands(plan: &Plan) -> Vec<Vec<String>> {
    let mut v: Vec<Vec<String>> = plan.jumps.iter().map(|j| j.args("-D")).collect();
    v.extend(CHAINS.iter().map(|c| chain_args("-F", c)));
    v.extend(CHAINS.iter().map(|c| chain_args("-X", c)));
    v
}

fn print(out: &mut dyn Write, program: &str, args: &[String]) -> Result<(), InitError> {
    writeln!(out, "{program} {}", args.join(" ")).map_err(InitError::Output)
}

/// The thin layer over the program itself.
struct Iptables {
    program: &'static str,
}

impl Iptables {
    /// Whether a query (`-S`, `-C`) succeeds; failing is an answer, not an error.
    fn succeeds(&self, args: &[String]) -> Result<bool, InitError> {
        let out = self.command(args)?;
        Ok(out.status.success())
    }

    /// Runs a change, printing it first.
    fn apply(&self, args: &[String], out: &mut dyn Write) -> Result<(), InitError> {
        print(out, self.program, args)?;
        let o = self.command(args)?;
        if o.status.success() {
            return Ok(());
        }
        Err(InitError::Failed {
            command: format!("{} {}", self.program, args.join(" ")),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        })
    }

    fn command(&self, args: &[String]) -> Result<std::process::Output, InitError> {
        // `-w`: wait for the xtables lock instead of failing when another
        // process edits the tables at the same moment.
        Command::new(self.program)
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| InitError::Spawn {
                program: self.program,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::rules::{Family, Redirect};

    #[test]
    fn a_dry_run_prints_every_command_and_runs_none() {
        let cfg = InitConfig {
            redirect: Redirect {
                proxy_uid: 1337,
                proxy_gid: 1337,
                inbound_port: 15006,
                outbound_port: 15001,
                admin_port: 15000,
                exclude_inbound_ports: vec![],
                exclude_outbound_ports: vec![],
                exclude_inbound_cidrs: vec![],
                exclude_outbound_cidrs: vec![],
            },
            mode: Mode::Remove,
            dry_run: true,
            families: vec![Family::V4, Family::V6],
        };
        let mut out = Vec::new();
        run_init(&cfg, &mut out).expect("dry run");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("iptables -t nat -D PREROUTING -p tcp -j WEFT_INBOUND\n"));
        assert!(text.contains("ip6tables -t nat -X WEFT_OUTPUT\n"));
        assert_eq!(text.lines().count(), 2 * (2 + 4 + 4));
    }
}
