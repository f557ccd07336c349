//! `cargo xtask dist`: what operators install, gathered in one directory: the release agent,
//! its systemd unit and environment file, a Containerfile and a Kubernetes DaemonSet (the
//! templates in `deploy/`), each checked with the tool that reads it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// The templates in `deploy/`, copied beside the binary, with what each is.
const TEMPLATES: &[(&str, &str)] = &[
    ("tracer.service", "systemd unit, runs /usr/local/bin/tracer"),
    ("tracer.env", "its settings, for /etc/tracer/tracer.env"),
    ("Containerfile", "container image (debian:bookworm-slim)"),
    (
        "tracer-daemonset.yaml",
        "Kubernetes DaemonSet, its namespace and service account",
    ),
];
/// Where the unit expects the agent; replaced by the built binary for `systemd-analyze verify`,
/// which checks that the program exists.
const UNIT_EXEC_START: &str = "ExecStart=/usr/local/bin/tracer";
/// The schema validator for the manifest, from PyPI, installed into [`VENV`].
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// A virtual environment of its own, under `target/`, so that nothing is installed system-wide.
const VENV: &str = "target/dist-venv";

pub struct Opts {
    /// Where to put the files; `target/dist` by default.
    pub out: Option<PathBuf>,
}

pub fn run(opts: Opts) -> anyhow::Result<()> {
    crate::setup(false)?;
    crate::cargo(&["build", "--release", "-p", "tracer-userspace"])?;
    let ws = crate::workspace();
    let out = opts.out.unwrap_or_else(|| ws.join("target/dist"));
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;

    let bin = out.join("tracer");
    // A copy running from here would make writing over it fail (ETXTBSY); a new file does not.
    let _ = fs::remove_file(&bin);
    fs::copy(ws.join("target/release/tracer"), &bin).context("copying target/release/tracer")?;
    for (name, _) in TEMPLATES {
        let from = ws.join("deploy").join(name);
        fs::copy(&from, out.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }

    check_env_file(&bin, &out.join("tracer.env"))?;
    let unit = verify_unit(&bin, &out.join("tracer.service"))?;
    check_containerfile(&out)?;
    validate_manifest(&ws, &out.join("tracer-daemonset.yaml"))?;

    println!("\n{}:", out.display());
    println!("  {:<22} the agent (release build)", "tracer");
    for (name, what) in TEMPLATES {
        println!("  {name:<22} {what}");
    }
    println!(
        "checked: tracer.env against the agent's flags; tracer.service {unit}; \
         tracer-daemonset.yaml with {KUBERNETES_VALIDATE} --strict; the Containerfile's \
         sources are present (the image is not built)"
    );
    Ok(())
}

/// The names of the `[env: NAME=]` variables `tracer --help` lists: one per flag.
fn flag_variables(bin: &Path) -> anyhow::Result<Vec<String>> {
    let help = crate::output(Command::new(bin).arg("--help"))
        .with_context(|| format!("{} --help failed", bin.display()))?;
    let names: Vec<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split_once('=').map(|(name, _)| name.to_string()))
        .collect();
    if names.is_empty() {
        bail!("tracer --help lists no environment variable: has its format changed?");
    }
    Ok(names)
}

/// Every flag's variable is in the environment file, and the examples it gives (the
/// `#NAME=value` lines), all set at once, are accepted by the agent: `tracer replay` of a
/// missing file parses the flags, the OTLP settings and the sampler before it opens the file.
/// Cgroups and certificate files are looked up later, so the examples' need not exist.
fn check_env_file(bin: &Path, env_file: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(env_file)?;
    let examples: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix('#')?.split_once('='))
        .filter(|(name, _)| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    let missing: Vec<String> = flag_variables(bin)?
        .into_iter()
        .filter(|v| !examples.iter().any(|(name, _)| name == v))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} lacks {}: add each, commented out, with a line saying what it does",
            env_file.display(),
            missing.join(", ")
        );
    }
    let absent = env_file.with_file_name("no-such-recording");
    let run = Command::new(bin)
        .env_clear()
        .envs(examples.iter().copied())
        .arg("replay")
        .arg(&absent)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !stderr.contains(&format!("opening {}", absent.display())) {
        bail!(
            "the examples in {} are not accepted by the agent:\n{stderr}",
            env_file.display()
        );
    }
    eprintln!(
        "xtask: tracer.env: {} examples accepted by the agent",
        examples.len()
    );
    Ok(())
}

/// `systemd-analyze verify` on a copy of the unit whose ExecStart= is the built binary. Its
/// warnings (an unknown directive, a bad value) leave its exit status 0, so any line naming
/// the unit fails too. Returns how the unit was checked.
fn verify_unit(bin: &Path, unit: &Path) -> anyhow::Result<&'static str> {
    if !crate::on_path("systemd-analyze") {
        eprintln!("xtask: systemd-analyze is not installed: tracer.service NOT verified");
        return Ok("not verified (no systemd-analyze)");
    }
    let text = fs::read_to_string(unit)?;
    if text.lines().filter(|l| *l == UNIT_EXEC_START).count() != 1 {
        bail!(
            "{} must have exactly one `{UNIT_EXEC_START}`",
            unit.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("tracer-dist-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let copy = dir.join("tracer.service");
    fs::write(
        &copy,
        text.replace(UNIT_EXEC_START, &format!("ExecStart={}", bin.display())),
    )?;
    let run = Command::new("systemd-analyze")
        .args(["verify", "--recursive-errors=no"])
        .arg(&copy)
        .output()
        .context("running systemd-analyze verify");
    let _ = fs::remove_dir_all(&dir);
    let run = run?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    eprint!("{report}");
    let copy = copy.display().to_string();
    if !run.status.success() || report.lines().any(|l| l.contains(&copy)) {
        bail!("systemd-analyze verify found problems in tracer.service (above)");
    }
    eprintln!("xtask: tracer.service: systemd-analyze verify reports nothing");
    Ok("with systemd-analyze verify")
}

/// What the Containerfile copies is in the directory it is built in.
fn check_containerfile(out: &Path) -> anyhow::Result<()> {
    let text = fs::read_to_string(out.join("Containerfile"))?;
    for line in text.lines().filter(|l| l.starts_with("COPY ")) {
        let args: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .filter(|a| !a.starts_with("--"))
            .collect();
        for source in args.split_last().map_or(&[][..], |(_, s)| s) {
            if !out.join(source).exists() {
                bail!(
                    "Containerfile copies {source}, which is not in {}",
                    out.display()
                );
            }
        }
    }
    Ok(())
}

/// `kubernetes-validate --strict` (unknown fields are errors) on the manifest, installed into
/// [`VENV`] the first time.
fn validate_manifest(ws: &Path, manifest: &Path) -> anyhow::Result<()> {
    let venv = ws.join(VENV);
    let validator = venv.join("bin/kubernetes-validate");
    let version = KUBERNETES_VALIDATE.split_once("==").map_or("", |(_, v)| v);
    let installed = crate::output(Command::new(&validator).arg("--version"))
        .is_some_and(|v| v.contains(version));
    if !installed {
        eprintln!("xtask: installing {KUBERNETES_VALIDATE} into {VENV}");
        crate::status(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        crate::status(Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            KUBERNETES_VALIDATE,
        ]))
        .with_context(|| {
            format!("installing {KUBERNETES_VALIDATE} from PyPI (is the network reachable?)")
        })?;
    }
    crate::status(Command::new(&validator).arg("--strict").arg(manifest))
        .context("tracer-daemonset.yaml does not validate against the Kubernetes schema")
}
