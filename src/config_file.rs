//! `--config FILE` (or `WARREN_CONFIG`): a TOML file whose `[server]` and
//! `[agent]` tables hold the same keys as the flags (`api-listen = "…"`,
//! `max-agents = 10000`, `access-log = true`, lists for repeatable flags).
//! Precedence: flags, then `WARREN_*` variables, then the file, then the
//! defaults. The file is turned into flags for the command line parser, so
//! every key is checked exactly as the flag is; a key no flag has is refused
//! with its name and line. Part of the binary, not the library.

use std::{collections::BTreeMap, ffi::OsString, path::Path};

use clap::CommandFactory;
use toml::{Spanned, Value};

use crate::cli::Cli;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}, line {line}: {message}")]
    Key {
        path: String,
        line: usize,
        message: String,
    },
}

/// The commands a file configures, each its own table.
const SECTIONS: [&str; 2] = ["server", "agent"];

type Table = BTreeMap<Spanned<String>, Spanned<Value>>;

/// A parsed config file: its text (for line numbers) and its tables.
pub struct ConfigFile {
    path: String,
    text: String,
    sections: BTreeMap<String, (usize, Table)>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        ConfigFile::parse(&shown, text)
    }

    fn parse(path: &str, text: String) -> Result<ConfigFile, ConfigError> {
        let top: BTreeMap<Spanned<String>, Spanned<Table>> =
            toml::from_str(&text).map_err(|e| ConfigError::Syntax {
                path: path.into(),
                message: e.to_string(),
            })?;
        let mut file = ConfigFile {
            path: path.into(),
            text,
            sections: BTreeMap::new(),
        };
        for (name, value) in top {
            let line = file.line(name.span().start);
            if !SECTIONS.contains(&name.get_ref().as_str()) {
                return Err(file.key_error(
                    line,
                    format!(
                        "unknown key `{}`: the file holds a [server] and/or an [agent] table",
                        name.get_ref()
                    ),
                ));
            }
            file.sections
                .insert(name.into_inner(), (line, value.into_inner()));
        }
        Ok(file)
    }

    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn key_error(&self, line: usize, message: String) -> ConfigError {
        ConfigError::Key {
            path: self.path.clone(),
            line,
            message,
        }
    }

    /// The tables this file has, in order.
    pub fn sections(&self) -> Vec<&str> {
        self.sections.keys().map(String::as_str).collect()
    }

    /// `command`'s table as flags, leaving out those that `given` (the
    /// command line) or the environment already set.
    pub fn flags(&self, command: &str, given: &[OsString]) -> Result<Vec<OsString>, ConfigError> {
        let mut out = Vec::new();
        for (flag, value) in self.entries(command, given)? {
            out.push(OsString::from(flag));
            out.extend(value.map(OsString::from));
        }
        Ok(out)
    }

    /// `command`'s table as `(--flag, value)` pairs (no value: a switch
    /// that is on), leaving out what `given` or the environment set.
    pub fn entries(
        &self,
        command: &str,
        given: &[OsString],
    ) -> Result<Vec<(String, Option<String>)>, ConfigError> {
        let Some((_, table)) = self.sections.get(command) else {
            return Ok(Vec::new());
        };
        // Built, so that the global flags (`log`, `log-format`) are keys too.
        let mut cli = Cli::command();
        cli.build();
        let sub = cli
            .find_subcommand(command)
            .expect("sections name subcommands");
        let mut out = Vec::new();
        for (key, value) in table {
            let line = self.line(key.span().start);
            let name = key.get_ref().replace('_', "-");
            let Some(arg) = sub
                .get_arguments()
                .find(|a| a.get_long() == Some(name.as_str()) && name != "config")
            else {
                return Err(self.key_error(
                    line,
                    format!(
                        "unknown key `{}` in [{command}]: not a flag of `warren {command}` (see its --help)",
                        key.get_ref()
                    ),
                ));
            };
            let flag = format!("--{name}");
            let on_command_line = given.iter().any(|g| {
                g.to_str()
                    .is_some_and(|g| g == flag || g.starts_with(&format!("{flag}=")))
            });
            let in_environment = arg
                .get_env()
                .is_some_and(|var| std::env::var_os(var).is_some());
            if on_command_line || in_environment {
                continue;
            }
            let takes_value = arg.get_action().takes_values();
            let values: Vec<&Value> = match value.get_ref() {
                Value::Array(items) => items.iter().collect(),
                one => vec![one],
            };
            for v in values {
                let text = match v {
                    Value::String(s) => s.clone(),
                    Value::Integer(n) => n.to_string(),
                    Value::Float(f) => f.to_string(),
                    Value::Boolean(b) if !takes_value => {
                        if *b {
                            out.push((flag.clone(), None));
                        }
                        continue;
                    }
                    other => {
                        return Err(self.key_error(
                            line,
                            format!(
                                "`{}` in [{command}]: {} is not a value this flag takes",
                                key.get_ref(),
                                other.type_str()
                            ),
                        ))
                    }
                };
                if !takes_value {
                    return Err(self.key_error(
                        line,
                        format!(
                            "`{}` in [{command}] is a switch: write true or false",
                            key.get_ref()
                        ),
                    ));
                }
                out.push((flag.clone(), Some(text)));
            }
        }
        Ok(out)
    }
}

/// Where `argv` says its config file is: the command (`server` or
/// `agent`), the index of its name in `argv`, and the file (`--config FILE`,
/// else `WARREN_CONFIG`). `None` for other commands or without a file.
fn locate(argv: &[OsString]) -> Option<(String, usize, OsString)> {
    // The command: the first word that is not a global flag or its value
    // (the global flags as the parser knows them; each takes a value).
    let cli = Cli::command();
    let globals: Vec<String> = cli
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut i = 1;
    let (at, command) = loop {
        let a = argv.get(i)?.to_str()?;
        if globals.iter().any(|g| g == a) {
            i += 2;
        } else if globals.iter().any(|g| a.starts_with(&format!("{g}="))) {
            i += 1;
        } else {
            break (i, a.to_string());
        }
    };
    if !SECTIONS.contains(&command.as_str()) {
        return None;
    }
    let rest = &argv[at + 1..];
    let named = rest.iter().enumerate().find_map(|(j, a)| {
        let a = a.to_str()?;
        if a == "--config" {
            rest.get(j + 1).cloned()
        } else {
            a.strip_prefix("--config=").map(OsString::from)
        }
    });
    let path = named.or_else(|| std::env::var_os("WARREN_CONFIG"))?;
    Some((command, at, path))
}

/// `argv` with the config file's flags for its command inserted after the
/// command's name: the file named by `--config FILE` (or `WARREN_CONFIG`),
/// for `warren server` and `warren agent`. Anything else is left alone.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    let Some((command, at, path)) = locate(&argv) else {
        return Ok(argv);
    };
    let rest = &argv[at + 1..];
    let flags = ConfigFile::load(Path::new(&path))?.flags(&command, rest)?;
    let mut out = argv[..=at].to_vec();
    out.extend(flags);
    out.extend_from_slice(rest);
    Ok(out)
}

/// What the config file of `argv` says now, flag by flag (those the command
/// line or environment override left out); `None` without a file. For
/// reloading: compared with an earlier reading, it shows what changed.
pub fn current(argv: &[OsString]) -> Result<Option<BTreeMap<String, Vec<String>>>, ConfigError> {
    let Some((command, at, path)) = locate(argv) else {
        return Ok(None);
    };
    let file = ConfigFile::load(Path::new(&path))?;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (flag, value) in file.entries(&command, &argv[at + 1..])? {
        out.entry(flag).or_default().extend(value);
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse("test.toml", text.to_string())
    }

    #[test]
    fn keys_become_flags_and_unknown_keys_say_where() {
        let f = file(
            "[server]\napi-listen = \"127.0.0.1:9\"\nmax_agents = 5\naccess-log = true\ncert-name = [\"a\", \"b\"]\n",
        )
        .unwrap();
        let flags: Vec<String> = f
            .flags("server", &[])
            .unwrap()
            .into_iter()
            .map(|f| f.into_string().unwrap())
            .collect();
        assert_eq!(
            flags,
            [
                "--access-log",
                "--api-listen",
                "127.0.0.1:9",
                "--cert-name",
                "a",
                "--cert-name",
                "b",
                "--max-agents",
                "5"
            ]
        );
        // A flag on the command line wins over the file.
        let given = [OsString::from("--api-listen=127.0.0.1:1")];
        let flags = f.flags("server", &given).unwrap();
        assert!(!flags.iter().any(|f| f == "--api-listen"));

        let bad = file("[server]\napi-listen = \"x\"\n\nmax-agentz = 5\n").unwrap();
        let e = bad.flags("server", &[]).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("max-agentz"), "{e}");
        let e = file("\n[servre]\n").err().unwrap().to_string();
        assert!(e.contains("line 2") && e.contains("servre"), "{e}");
        let e = file("[server]\naccess-log = \"yes\"\n")
            .unwrap()
            .flags("server", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("switch"), "{e}");
        assert!(file("[server\n").is_err());
    }
}
