//! The container image, built for real with podman (`deploy/build-image.sh`:
//! FROM scratch, vfs storage, no registry) from the binaries this test run
//! built, then looked at without running a container (this machine's crun
//! refuses its cgroup mode): the image's user and entrypoint from `podman
//! image inspect`, its files through `podman image mount` — the three
//! binaries, every library each needs, the weft user — and, as root, each
//! binary started inside the mounted root with `chroot`, which proves the
//! libraries in the image are enough.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use weft_tests::process::bin;

const BINARIES: [&str; 3] = ["weft-sidecar", "weft-control-plane", "weftctl"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs podman with the vfs driver the build used; its stdout, or an error
/// with stderr.
fn podman(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("podman")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .context("podman")?;
    anyhow::ensure!(
        out.status.success(),
        "podman {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const PT_GNU_STACK: u32 = 0x6474_e551;
const PF_X: u32 = 1;

/// The flags of a 64-bit little-endian ELF file's GNU_STACK program
/// header, or `None` when it has none.
fn stack_flags(path: &Path) -> anyhow::Result<Option<u32>> {
    let elf = std::fs::read(path)?;
    let at = |off: usize, n: usize| {
        elf.get(off..off + n)
            .with_context(|| format!("{} is cut short (ELF header)", path.display()))
    };
    anyhow::ensure!(
        at(0, 6)? == b"\x7fELF\x02\x01",
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |off| at(off, 2).map(|b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let phoff = u64::from_le_bytes(at(0x20, 8)?.try_into()?) as usize;
    let (entry, count) = (u16_at(0x36)?, u16_at(0x38)?);
    for i in 0..count {
        let ph = at(phoff + i * entry, 8)?;
        if u32::from_le_bytes(ph[..4].try_into()?) == PT_GNU_STACK {
            return Ok(Some(u32::from_le_bytes(ph[4..8].try_into()?)));
        }
    }
    Ok(None)
}

/// The image is removed however the test ends.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["image", "unmount", &self.0]);
        let _ = podman(&["rmi", "--force", &self.0]);
    }
}

#[test]
fn the_image_holds_the_three_binaries_their_libraries_and_the_weft_user() -> anyhow::Result<()> {
    if Command::new("podman").arg("--version").output().is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            anyhow::bail!("podman is missing: the image test builds with it (.ci/run installs it)");
        }
        eprintln!("skipping: podman is missing (apt-get install podman)");
        return Ok(());
    }
    let bin_dir = bin("weft-sidecar")?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for b in BINARIES {
        bin(b)?;
    }
    let tag = format!("localhost/weft:test-{}", std::process::id());
    let image = Image(tag.clone());
    let out = Command::new(repo_root().join("deploy/build-image.sh"))
        .args(["--bin-dir", &bin_dir.display().to_string(), "--tag", &tag])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "deploy/build-image.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let inspect: serde_json::Value = serde_json::from_str(&podman(&["image", "inspect", &tag])?)?;
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "1337:1337", "{config}");
    assert_eq!(
        config["Entrypoint"][0], "/usr/local/bin/weft-sidecar",
        "{config}"
    );

    let root = PathBuf::from(podman(&["image", "mount", &image.0])?.trim());
    anyhow::ensure!(root.is_dir(), "podman image mount gave {}", root.display());
    let passwd = std::fs::read_to_string(root.join("etc/passwd"))?;
    assert!(
        passwd.lines().any(|l| l.starts_with("weft:x:1337:1337:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group"))?;
    assert!(group.lines().any(|l| l == "weft:x:1337:"), "{group}");

    for b in BINARIES {
        let path = root.join("usr/local/bin").join(b);
        assert!(path.is_file(), "{} is not in the image", path.display());
        // Without this header (BOLT's -use-gnu-stack drops it), glibc maps
        // every thread's stack executable.
        match stack_flags(&path)? {
            Some(flags) => assert_eq!(flags & PF_X, 0, "{b} asks for an executable stack"),
            None => panic!(
                "{b} has no GNU_STACK program header: its threads' stacks would be executable"
            ),
        }
        // Every library the loader resolves for it here is in the image.
        let ldd = Command::new("ldd").arg(&path).output()?;
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let inside = root.join(lib.trim_start_matches('/'));
            assert!(inside.exists(), "{b} needs {lib}, which the image lacks");
        }
    }

    // Started inside the image's root: only its own files are there.
    if Command::new("id").arg("-u").output()?.stdout == b"0\n" {
        for b in BINARIES {
            let out = Command::new("chroot")
                .arg(&root)
                .arg(format!("/usr/local/bin/{b}"))
                .arg("--version")
                .output()?;
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains(b),
                "{b} --version inside the image: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // iptables for `weft-sidecar init` in the init container, when the
        // build machine has it (.ci/run installs it).
        if Path::new("/usr/sbin/xtables-nft-multi").exists() {
            let out = Command::new("chroot")
                .arg(&root)
                .args(["/usr/sbin/iptables", "--version"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains("nf_tables"),
                "iptables --version inside the image: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        eprintln!("not root: the binaries were not started inside the image (chroot needs root)");
    }
    Ok(())
}
