//! Runs a [`Plan`] through `iptables`/`ip6tables`. Installing is one
//! `iptables-restore --noflush` transaction per family: the kernel gets the
//! whole rule set or none of it, so a rule iptables rejects (or a crash
//! half-way) never leaves a namespace with its chains flushed and its
//! traffic half-redirected. The transaction is printed as the equivalent
//! iptables commands before it is committed. Idempotent: a chain declared
//! in the transaction is created when missing and flushed otherwise, and
//! the jumps into our chains are added only when absent, so a second run
//! leaves `iptables-save` as the first did.

use std::io::Write;
use std::process::{Command, Stdio};

use super::config::{InitConfig, Mode};
use super::rules::{CHAINS, Family, Plan, TABLE, chain_args};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("cannot run {program} (is the iptables package installed?): {source}")]
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr} (init needs root, or CAP_NET_ADMIN and CAP_NET_RAW)")]
    Failed { command: String, stderr: String },
    #[error(
        "{program} rejected the rule set, so nothing was changed (the rules before this run are \
         still in place): {stderr}{}",
        line.as_ref().map(|l| format!(" (the rejected line: {l})")).unwrap_or_default()
    )]
    Rejected {
        program: &'static str,
        stderr: String,
        /// The line of the transaction iptables named, when it named one.
        line: Option<String>,
    },
    #[error("cannot write the rules out: {0}")]
    Output(std::io::Error),
}

/// Applies (or with `dry_run` only prints) `cfg`'s rules, for each family.
/// The families are separate transactions (iptables has no transaction
/// across them): IPv4 first, so an IPv6 failure leaves IPv4 installed and
/// is reported; running `init` again completes it.
pub fn run_init(cfg: &InitConfig, out: &mut dyn Write) -> Result<(), InitError> {
    for family in &cfg.families {
        let plan = Plan::new(&cfg.redirect, *family);
        let ipt = Iptables { family: *family };
        if cfg.dry_run {
            let cmds = match cfg.mode {
                Mode::Install => plan.install_commands(),
                Mode::Remove => remove_commands(&plan),
            };
            for c in cmds {
                print(out, ipt.program(), &c)?;
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
    let mut tx = Transaction::default();
    // A chain that exists is flushed and refilled rather than compared:
    // the result is the same rule list either way.
    for chain in CHAINS {
        let exists = ipt.succeeds(&chain_args("-S", chain))?;
        tx.chain(chain, exists);
    }
    for rule in &plan.rules {
        tx.rule(rule.args("-A"));
    }
    for jump in &plan.jumps {
        if !ipt.succeeds(&jump.args("-C"))? {
            tx.rule(jump.args("-A"));
        }
    }
    for c in &tx.commands {
        print(out, ipt.program(), c)?;
    }
    ipt.restore(&tx.input())?;
    writeln!(
        out,
        "{} --noflush: committed {} commands in one transaction",
        ipt.restore_program(),
        tx.commands.len()
    )
    .map_err(InitError::Output)
}

/// One `iptables-restore --noflush` input for the `nat` table, kept with
/// the iptables commands it stands for (what is printed).
#[derive(Default)]
struct Transaction {
    /// `:CHAIN - [0:0]`: creates the chain, or flushes it when it exists.
    declarations: Vec<String>,
    /// `-A CHAIN SPEC...`, in order.
    lines: Vec<String>,
    commands: Vec<Vec<String>>,
}

impl Transaction {
    fn chain(&mut self, chain: &str, exists: bool) {
        self.declarations.push(format!(":{chain} - [0:0]"));
        self.commands
            .push(chain_args(if exists { "-F" } else { "-N" }, chain));
    }

    /// `args` as `-t nat -A CHAIN SPEC...`.
    fn rule(&mut self, args: Vec<String>) {
        // Past `-t nat`, restore takes the rest of the command line as is.
        self.lines.push(args[2..].join(" "));
        self.commands.push(args);
    }

    fn input(&self) -> String {
        let mut s = format!("*{TABLE}\n");
        for l in self.declarations.iter().chain(&self.lines) {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("COMMIT\n");
        s
    }
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

/// The thin layer over the programs themselves.
struct Iptables {
    family: Family,
}

impl Iptables {
    fn program(&self) -> &'static str {
        self.family.program()
    }

    fn restore_program(&self) -> &'static str {
        match self.family {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    /// Whether a query (`-S`, `-C`) succeeds; failing is an answer, not an error.
    fn succeeds(&self, args: &[String]) -> Result<bool, InitError> {
        let out = self.command(args)?;
        Ok(out.status.success())
    }

    /// Runs a change, printing it first.
    fn apply(&self, args: &[String], out: &mut dyn Write) -> Result<(), InitError> {
        print(out, self.program(), args)?;
        let o = self.command(args)?;
        if o.status.success() {
            return Ok(());
        }
        Err(InitError::Failed {
            command: format!("{} {}", self.program(), args.join(" ")),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        })
    }

    fn command(&self, args: &[String]) -> Result<std::process::Output, InitError> {
        // `-w`: wait for the xtables lock instead of failing when another
        // process edits the tables at the same moment.
        Command::new(self.program())
            .arg("-w")
            .args(args)
            .output()
            .map_err(|source| InitError::Spawn {
                program: self.program(),
                source,
            })
    }

    /// Commits `input` in one transaction; `--noflush` leaves the rules
    /// and chains it does not name alone (everyone else's).
    fn restore(&self, input: &str) -> Result<(), InitError> {
        let program = self.restore_program();
        let spawn = |source| InitError::Spawn { program, source };
        let mut child = Command::new(program)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A write error means it exited early; its status says why.
            let _ = stdin.write_all(input.as_bytes());
        }
        let o = child.wait_with_output().map_err(spawn)?;
        if o.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&o.stderr).trim().to_string();
        Err(InitError::Rejected {
            program,
            line: rejected_line(&stderr, input),
            stderr,
        })
    }
}

/// The input line iptables-restore names in "Error occurred at line: N".
fn rejected_line(stderr: &str, input: &str) -> Option<String> {
    let (_, rest) = stderr.split_once("Error occurred at line: ")?;
    let n: usize = rest.split_whitespace().next()?.parse().ok()?;
    input.lines().nth(n.checked_sub(1)?).map(str::to_string)
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

    #[test]
    fn the_transaction_declares_our_chains_then_appends_in_order() {
        let mut tx = Transaction::default();
        tx.chain("WEFT_OUTPUT", true);
        tx.chain("WEFT_REDIRECT", false);
        let rule = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        tx.rule(rule("-t nat -A WEFT_OUTPUT -o lo -j RETURN"));
        tx.rule(rule("-t nat -A OUTPUT -p tcp -j WEFT_OUTPUT"));
        assert_eq!(
            tx.input(),
            "*nat\n:WEFT_OUTPUT - [0:0]\n:WEFT_REDIRECT - [0:0]\n\
             -A WEFT_OUTPUT -o lo -j RETURN\n-A OUTPUT -p tcp -j WEFT_OUTPUT\nCOMMIT\n"
        );
        let printed: Vec<String> = tx.commands.iter().map(|c| c.join(" ")).collect();
        assert_eq!(printed[0], "-t nat -F WEFT_OUTPUT");
        assert_eq!(printed[1], "-t nat -N WEFT_REDIRECT");
    }

    #[test]
    fn a_rejection_names_the_line_iptables_pointed_at() {
        let input = "*nat\n:WEFT_OUTPUT - [0:0]\n-A WEFT_OUTPUT -m owner --uid-owner 4294967295 -j RETURN\nCOMMIT\n";
        let stderr = "iptables-restore v1.8.9 (nf_tables): owner: Bad value\nError occurred at line: 3\nTry `iptables-restore -h'";
        assert_eq!(
            rejected_line(stderr, input).as_deref(),
            Some("-A WEFT_OUTPUT -m owner --uid-owner 4294967295 -j RETURN")
        );
        assert_eq!(rejected_line("something else", input), None);
        assert_eq!(rejected_line("Error occurred at line: 0", input), None);
    }
}
