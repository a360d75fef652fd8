//! The simulator's command set. Nothing here ever runs a host process: each
//! command is a few lines of Rust that produce plausible output.

use std::collections::BTreeMap;
use std::time::Duration;

/// Output of one built-in command, in the order it was produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Output {
    pub chunks: Vec<Chunk>,
    pub exit_code: i32,
    /// Time the command "takes".
    pub sleep: Duration,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Chunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

const FILES: &[(&str, &str)] = &[
    ("/etc/hostname", "sandbox\n"),
    ("/etc/os-release", "PRETTY_NAME=\"OpenShell Sandbox (simulated)\"\nID=openshell-sim\n"),
    ("/sandbox/README.md", "# Workspace\nThis sandbox is simulated by openshell-sim.\n"),
    ("/proc/version", "Linux version 6.1.0-openshell-sim\n"),
];

fn out(s: impl Into<String>) -> Chunk {
    Chunk::Stdout(s.into().into_bytes())
}

fn err(s: impl Into<String>) -> Chunk {
    Chunk::Stderr(s.into().into_bytes())
}

/// Runs `command_line` against the built-in command set.
pub(crate) fn run(command_line: &[String], env: &BTreeMap<String, String>, workdir: &str, input: &[u8]) -> Output {
    let Some((program, args)) = command_line.split_first() else {
        return Output { chunks: vec![err("sim: empty command\n")], exit_code: 2, ..Default::default() };
    };
    let name = program.rsplit('/').next().unwrap_or(program);
    match name {
        // `sh -c "..."` and `bash -lc "..."`: split the script like a shell
        // would and run it as one command.
        "sh" | "bash" if matches!(args.first().map(String::as_str), Some("-c" | "-lc")) => {
            let Some(script) = args.get(1) else {
                return Output {
                    chunks: vec![err(format!("{name}: -c: option requires an argument\n"))],
                    exit_code: 2,
                    ..Default::default()
                };
            };
            match shlex::split(script) {
                Some(inner) if !inner.is_empty() => run(&inner, env, workdir, input),
                Some(_) => Output::default(),
                None => Output {
                    chunks: vec![err(format!("{name}: syntax error: unterminated quoted string\n"))],
                    exit_code: 2,
                    ..Default::default()
                },
            }
        }
        "echo" => {
            let (newline, words) = match args.first().map(String::as_str) {
                Some("-n") => (false, &args[1..]),
                _ => (true, args),
            };
            let mut s = words.join(" ");
            if newline {
                s.push('\n');
            }
            Output { chunks: vec![out(s)], ..Default::default() }
        }
        "true" => Output::default(),
        "false" => Output { exit_code: 1, ..Default::default() },
        "exit" => Output { exit_code: args.first().and_then(|a| a.parse().ok()).unwrap_or(0), ..Default::default() },
        "sleep" => match args.first().and_then(|a| a.parse::<f64>().ok()).filter(|s| s.is_finite() && *s >= 0.0) {
            Some(secs) => Output { sleep: Duration::from_secs_f64(secs.min(3600.0)), ..Default::default() },
            None => Output { chunks: vec![err("sleep: invalid time interval\n")], exit_code: 1, ..Default::default() },
        },
        "env" => {
            let s: String = env.iter().flat_map(|(k, v)| [k.as_str(), "=", v.as_str(), "\n"]).collect();
            Output { chunks: vec![out(s)], ..Default::default() }
        }
        "pwd" => Output {
            chunks: vec![out(format!("{}\n", if workdir.is_empty() { "/sandbox" } else { workdir }))],
            ..Default::default()
        },
        "whoami" | "hostname" => Output { chunks: vec![out("sandbox\n")], ..Default::default() },
        "uname" => Output { chunks: vec![out("Linux\n")], ..Default::default() },
        "cat" if args.is_empty() => Output { chunks: vec![Chunk::Stdout(input.to_vec())], ..Default::default() },
        "cat" => {
            let mut chunks = Vec::new();
            let mut code = 0;
            for path in args {
                if let Some((_, body)) = FILES.iter().find(|(p, _)| p == path) {
                    chunks.push(out(*body));
                } else {
                    chunks.push(err(format!("cat: {path}: No such file or directory\n")));
                    code = 1;
                }
            }
            Output { chunks, exit_code: code, ..Default::default() }
        }
        "ls" => {
            let dir = args.iter().find(|a| !a.starts_with('-')).map_or("/sandbox", String::as_str);
            let prefix = format!("{}/", dir.trim_end_matches('/'));
            let names: Vec<&str> =
                FILES.iter().filter_map(|(p, _)| p.strip_prefix(&prefix)).filter(|n| !n.contains('/')).collect();
            Output {
                chunks: vec![out(names.iter().flat_map(|n| [*n, "\n"]).collect::<String>())],
                ..Default::default()
            }
        }
        "seq" => {
            let n: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(0).min(1_000_000);
            let mut s = String::new();
            for i in 1..=n {
                s.push_str(&i.to_string());
                s.push('\n');
            }
            Output { chunks: vec![out(s)], ..Default::default() }
        }
        // Writes to both streams: lets clients check they keep them apart.
        "stderr" => Output {
            chunks: vec![out("to stdout\n"), err(format!("{}\n", args.join(" ")))],
            exit_code: 3,
            ..Default::default()
        },
        _ => Output {
            chunks: vec![err(format!(
                "sim: {name}: command not found (openshell-sim runs a small built-in command set)\n"
            ))],
            exit_code: 127,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_s(argv: &[&str]) -> Output {
        let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
        run(&argv, &BTreeMap::new(), "", b"")
    }

    #[test]
    fn echo_and_exit_codes() {
        assert_eq!(run_s(&["echo", "hi"]).chunks, vec![out("hi\n")]);
        assert_eq!(run_s(&["false"]).exit_code, 1);
        assert_eq!(run_s(&["/bin/true"]).exit_code, 0);
        assert_eq!(run_s(&["nope"]).exit_code, 127);
    }

    #[test]
    fn shell_scripts_are_split_not_run() {
        assert_eq!(run_s(&["sh", "-c", "echo 'hi there'"]).chunks, vec![out("hi there\n")]);
        assert_eq!(run_s(&["bash", "-lc", "echo \"hi"]).exit_code, 2);
    }

    #[test]
    fn cat_knows_a_few_files() {
        assert_eq!(run_s(&["cat", "/etc/hostname"]).chunks, vec![out("sandbox\n")]);
        assert_eq!(run_s(&["cat", "/etc/shadow"]).exit_code, 1);
    }
}
