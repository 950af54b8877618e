//! A Dockerfile reader for the one kind of image the process engine can run without Docker: a
//! `FROM scratch` image made of local files. It turns the text into a [`ScratchRecipe`] (the
//! COPY steps in order, the final environment, working directory, entrypoint and command) and
//! refuses everything that would need a real builder: another base image, RUN, multi-stage
//! builds, shell-form ENTRYPOINT/CMD (scratch has no shell), remote ADD, archives, wildcards.
//!
//! What it understands: line continuations (`\`), comments, the `# syntax=` directive (ignored),
//! `COPY`/`ADD` with `--chmod` (`--chown` and `--link` are accepted and ignored: the process
//! engine runs everything as the node's user), `ENV` in both forms, `WORKDIR`, exec-form
//! `ENTRYPOINT`/`CMD`, and `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR:+word}` from earlier ENVs.
//! `LABEL`, `EXPOSE`, `USER`, `VOLUME`, `STOPSIGNAL`, `HEALTHCHECK` and `MAINTAINER` change
//! nothing a process needs and are skipped.

use std::collections::BTreeMap;

/// A COPY or ADD of files from the build context into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStep {
    /// Paths in the build context.
    pub srcs: Vec<String>,
    /// The destination in the image, absolute (a relative one is resolved against WORKDIR).
    pub dest: String,
    /// Whether `dest` names a directory (ends in `/` or there are several sources).
    pub dest_is_dir: bool,
    /// `--chmod`, as permission bits.
    pub chmod: Option<u32>,
    /// The line the instruction starts on.
    pub line: usize,
}

/// What a `FROM scratch` Dockerfile makes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScratchRecipe {
    pub copies: Vec<CopyStep>,
    /// The image's environment, in the order first set.
    pub env: Vec<(String, String)>,
    /// The working directory, absolute; `/` when never set.
    pub workdir: String,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
}

/// Why a Dockerfile was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileError {
    /// Not a valid Dockerfile.
    #[error("Dockerfile line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// Valid, but it needs a real builder.
    #[error("Dockerfile line {line}: {message}")]
    Unsupported { line: usize, message: String },
}

fn syntax(line: usize, message: impl Into<String>) -> DockerfileError {
    DockerfileError::Syntax {
        line,
        message: message.into(),
    }
}

fn unsupported(line: usize, message: impl Into<String>) -> DockerfileError {
    DockerfileError::Unsupported {
        line,
        message: message.into(),
    }
}

/// One instruction: where it starts, its keyword (upper case) and the rest.
struct Instruction {
    line: usize,
    keyword: String,
    args: String,
}

/// Joins continuation lines, drops comments and blank lines, and refuses an `escape` directive.
fn instructions(text: &str) -> Result<Vec<Instruction>, DockerfileError> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    let mut directives_allowed = true;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if directives_allowed {
            if let Some(rest) = trimmed.strip_prefix('#') {
                let rest = rest.trim();
                if let Some((key, value)) = rest.split_once('=') {
                    let key = key.trim().to_ascii_lowercase();
                    if key == "escape" && value.trim() != "\\" {
                        return Err(unsupported(
                            line,
                            "an escape directive other than '\\' is not supported",
                        ));
                    }
                    if key == "escape" || key == "syntax" || key == "check" {
                        continue;
                    }
                }
            }
            directives_allowed = false;
        }
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_none()) {
            continue;
        }
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        match current.as_mut() {
            Some((_, text)) => {
                text.push(' ');
                text.push_str(body.trim());
            }
            None => current = Some((line, body.trim().to_string())),
        }
        if !continues {
            if let Some((start, text)) = current.take() {
                if !text.is_empty() {
                    let (keyword, args) = match text.split_once(char::is_whitespace) {
                        Some((k, a)) => (k.to_ascii_uppercase(), a.trim().to_string()),
                        None => (text.to_ascii_uppercase(), String::new()),
                    };
                    out.push(Instruction {
                        line: start,
                        keyword,
                        args,
                    });
                }
            }
        }
    }
    if let Some((start, _)) = current {
        return Err(syntax(
            start,
            "the last instruction ends in a '\\' continuation",
        ));
    }
    Ok(out)
}

/// Expands `$VAR`, `${VAR}`, `${VAR:-word}` and `${VAR:+word}`; `\$` is a literal `$`.
fn substitute(
    text: &str,
    env: &BTreeMap<String, String>,
    line: usize,
) -> Result<String, DockerfileError> {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'$') => {
                out.push('$');
                chars.next();
            }
            '$' => {
                if chars.peek() == Some(&'{') {
                    chars.next();
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => inner.push(ch),
                            None => return Err(syntax(line, format!("unclosed '${{{inner}'"))),
                        }
                    }
                    let (name, modifier) = match inner.find(':') {
                        Some(i) => (&inner[..i], Some(&inner[i..])),
                        None => (inner.as_str(), None),
                    };
                    let value = env.get(name).filter(|v| !v.is_empty());
                    match modifier {
                        None => out.push_str(env.get(name).map_or("", |v| v)),
                        Some(m) if m.starts_with(":-") => {
                            out.push_str(value.map_or(&m[2..], |v| v));
                        }
                        Some(m) if m.starts_with(":+") => {
                            out.push_str(if value.is_some() { &m[2..] } else { "" });
                        }
                        Some(m) => {
                            return Err(unsupported(
                                line,
                                format!("the substitution '${{{name}{m}}}' is not supported"),
                            ))
                        }
                    }
                } else {
                    let mut name = String::new();
                    while let Some(&ch) = chars.peek() {
                        if ch.is_ascii_alphanumeric() || ch == '_' {
                            name.push(ch);
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    if name.is_empty() {
                        out.push('$');
                    } else {
                        out.push_str(env.get(&name).map_or("", |v| v));
                    }
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// Splits `a "b c" 'd'` into words, honouring quotes and backslash escapes.
fn words(text: &str, line: usize) -> Result<Vec<String>, DockerfileError> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                if let Some(n) = chars.next() {
                    word.push(n);
                    in_word = true;
                }
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(syntax(line, "unclosed quote"));
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// An exec-form `["a", "b"]` list, or the refusal of the shell form.
fn exec_form(keyword: &str, args: &str, line: usize) -> Result<Vec<String>, DockerfileError> {
    if !args.trim_start().starts_with('[') {
        return Err(unsupported(
            line,
            format!(
                "{keyword} in shell form needs /bin/sh, which a scratch image does not have; \
                 write the exec form, e.g. {keyword} [\"/app\", \"--flag\"]"
            ),
        ));
    }
    serde_json::from_str::<Vec<String>>(args).map_err(|e| {
        syntax(
            line,
            format!("{keyword} is not a JSON array of strings: {e}"),
        )
    })
}

/// Joins a path onto an absolute base the way Docker does, clamping `..` at the root.
pub fn join_abs(base: &str, path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let full = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_archive(path: &str) -> bool {
    const EXTS: [&str; 9] = [
        ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".gz",
    ];
    let lower = path.to_ascii_lowercase();
    EXTS.iter().any(|e| lower.ends_with(e))
}

fn copy_step(
    keyword: &str,
    args: &str,
    env: &BTreeMap<String, String>,
    workdir: &str,
    line: usize,
) -> Result<CopyStep, DockerfileError> {
    let mut rest = args.trim();
    let mut chmod = None;
    while let Some(flag) = rest.strip_prefix("--") {
        let (flag, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
        let (name, value) = flag.split_once('=').unwrap_or((flag, ""));
        match name {
            "chown" | "link" => {}
            "chmod" => {
                chmod =
                    Some(u32::from_str_radix(value, 8).map_err(|_| {
                        syntax(line, format!("--chmod={value} is not an octal mode"))
                    })?)
            }
            "from" => {
                return Err(unsupported(
                    line,
                    format!("{keyword} --from copies from another stage or image"),
                ))
            }
            other => {
                return Err(unsupported(
                    line,
                    format!("the {keyword} flag --{other} is not supported"),
                ))
            }
        }
        rest = after.trim_start();
    }
    let mut parts = if rest.starts_with('[') {
        serde_json::from_str::<Vec<String>>(rest).map_err(|e| {
            syntax(
                line,
                format!("{keyword} is not a JSON array of strings: {e}"),
            )
        })?
    } else {
        words(rest, line)?
    };
    for p in &mut parts {
        *p = substitute(p, env, line)?;
    }
    if parts.len() < 2 {
        return Err(syntax(
            line,
            format!("{keyword} needs at least one source and a destination"),
        ));
    }
    let dest_raw = parts.pop().unwrap_or_default();
    let srcs = parts;
    for src in &srcs {
        if src.contains("://") || src.starts_with("git@") {
            return Err(unsupported(
                line,
                format!("{keyword} of a remote source ({src}) needs a real builder"),
            ));
        }
        if src.contains(['*', '?', '[']) {
            return Err(unsupported(
                line,
                format!("{keyword} with a wildcard ({src}); name the files one by one"),
            ));
        }
        if keyword == "ADD" && is_archive(src) {
            return Err(unsupported(
                line,
                format!("ADD of an archive ({src}) unpacks it; unpack it into the context and COPY the files"),
            ));
        }
    }
    let dest_is_dir = dest_raw.ends_with('/') || srcs.len() > 1;
    Ok(CopyStep {
        srcs,
        dest: join_abs(workdir, &dest_raw),
        dest_is_dir,
        chmod,
        line,
    })
}

/// Parses the `ENV` arguments: `K=V K2="v 2"` or the legacy `K value with spaces`.
fn env_pairs(
    args: &str,
    env: &BTreeMap<String, String>,
    line: usize,
) -> Result<Vec<(String, String)>, DockerfileError> {
    let first = args.split_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err(syntax(line, "ENV needs a name and a value"));
    }
    if !first.contains('=') {
        let (name, value) = args
            .split_once(char::is_whitespace)
            .ok_or_else(|| syntax(line, format!("ENV {name} has no value", name = first)))?;
        return Ok(vec![(
            name.to_string(),
            substitute(value.trim(), env, line)?,
        )]);
    }
    let mut out = Vec::new();
    for word in words(args, line)? {
        let (k, v) = word
            .split_once('=')
            .ok_or_else(|| syntax(line, format!("ENV {word:?} is not NAME=value")))?;
        if k.is_empty() {
            return Err(syntax(line, "ENV with an empty name"));
        }
        out.push((k.to_string(), substitute(v, env, line)?));
    }
    Ok(out)
}

/// Reads a Dockerfile that builds `FROM scratch`, or says why the process engine cannot.
pub fn parse_scratch(text: &str) -> Result<ScratchRecipe, DockerfileError> {
    let mut recipe = ScratchRecipe {
        workdir: "/".into(),
        ..Default::default()
    };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut seen_from = false;
    for ins in instructions(text)? {
        let line = ins.line;
        if !seen_from && ins.keyword != "FROM" {
            return Err(match ins.keyword.as_str() {
                "ARG" => unsupported(line, "ARG (build arguments) is not supported"),
                k => syntax(
                    line,
                    format!("{k} before FROM; a Dockerfile starts with FROM"),
                ),
            });
        }
        match ins.keyword.as_str() {
            "FROM" => {
                if seen_from {
                    return Err(unsupported(
                        line,
                        "a second FROM (multi-stage builds) needs a real builder",
                    ));
                }
                let mut parts = ins.args.split_whitespace();
                let base = parts.next().unwrap_or("");
                let flags_or_alias: Vec<&str> = parts.collect();
                if base.starts_with("--") {
                    return Err(unsupported(line, format!("FROM {base} (flags on FROM)")));
                }
                if !base.eq_ignore_ascii_case("scratch") {
                    return Err(unsupported(
                        line,
                        format!("FROM {base}: only FROM scratch can be run without Docker"),
                    ));
                }
                let alias_ok = matches!(flags_or_alias.as_slice(), [] | [_, _])
                    && !matches!(flags_or_alias.first(), Some(w) if !w.eq_ignore_ascii_case("as"));
                if !alias_ok {
                    return Err(syntax(line, format!("FROM {}: cannot parse", ins.args)));
                }
                seen_from = true;
            }
            "COPY" | "ADD" => {
                recipe.copies.push(copy_step(
                    &ins.keyword,
                    &ins.args,
                    &env,
                    &recipe.workdir,
                    line,
                )?);
            }
            "ENV" => {
                for (k, v) in env_pairs(&ins.args, &env, line)? {
                    match recipe.env.iter_mut().find(|(name, _)| *name == k) {
                        Some(slot) => slot.1 = v.clone(),
                        None => recipe.env.push((k.clone(), v.clone())),
                    }
                    env.insert(k, v);
                }
            }
            "WORKDIR" => {
                let path = substitute(ins.args.trim(), &env, line)?;
                if path.is_empty() {
                    return Err(syntax(line, "WORKDIR needs a path"));
                }
                recipe.workdir = join_abs(&recipe.workdir, &path);
            }
            "ENTRYPOINT" => recipe.entrypoint = Some(exec_form("ENTRYPOINT", &ins.args, line)?),
            "CMD" => recipe.cmd = Some(exec_form("CMD", &ins.args, line)?),
            "LABEL" | "EXPOSE" | "USER" | "VOLUME" | "STOPSIGNAL" | "HEALTHCHECK"
            | "MAINTAINER" => {}
            "RUN" => {
                return Err(unsupported(
                    line,
                    "RUN executes a command at build time, which needs a real builder",
                ))
            }
            "ARG" | "ONBUILD" | "SHELL" => {
                return Err(unsupported(
                    line,
                    format!("{} is not supported", ins.keyword),
                ))
            }
            other => return Err(syntax(line, format!("unknown instruction {other}"))),
        }
    }
    if !seen_from {
        return Err(syntax(1, "the Dockerfile has no FROM instruction"));
    }
    Ok(recipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsupported_at(text: &str) -> (usize, String) {
        match parse_scratch(text) {
            Err(DockerfileError::Unsupported { line, message }) => (line, message),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn the_house_build_context_is_read() {
        let r = parse_scratch(
            "# The relay as an image\nFROM scratch\nCOPY brume-relay /brume-relay\n\
             ENTRYPOINT [\"/brume-relay\"]\n",
        )
        .unwrap();
        assert_eq!(r.copies.len(), 1);
        assert_eq!(r.copies[0].srcs, vec!["brume-relay"]);
        assert_eq!(r.copies[0].dest, "/brume-relay");
        assert!(!r.copies[0].dest_is_dir);
        assert_eq!(r.entrypoint, Some(vec!["/brume-relay".to_string()]));
        assert_eq!(r.cmd, None);
        assert_eq!(r.workdir, "/");
    }

    #[test]
    fn env_workdir_continuations_and_substitution() {
        let r = parse_scratch(
            "# syntax=docker/dockerfile:1\nfrom SCRATCH as base\nENV A=1 B=\"two words\" \\\n    C=${A}x\n\
             ENV LEGACY some value\nWORKDIR /srv\nWORKDIR app\nCOPY --chmod=755 --chown=1:1 bin conf/ ./\n\
             ADD [\"data file\", \"$B/\"]\nLABEL a=b\nEXPOSE 80\nCMD [\"--port\", \"${PORT:-80}\"]\n",
        )
        .unwrap();
        assert_eq!(
            r.env,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                // Like Docker: one ENV sees the values from before it, not its own.
                ("C".into(), "x".into()),
                ("LEGACY".into(), "some value".into()),
            ]
        );
        assert_eq!(r.workdir, "/srv/app");
        assert_eq!(r.copies[0].srcs, vec!["bin", "conf/"]);
        assert_eq!(r.copies[0].dest, "/srv/app");
        assert!(r.copies[0].dest_is_dir);
        assert_eq!(r.copies[0].chmod, Some(0o755));
        assert_eq!(r.copies[1].srcs, vec!["data file"]);
        assert_eq!(r.copies[1].dest, "/srv/app/two words");
        assert!(r.copies[1].dest_is_dir);
        // CMD is exec form: no substitution, like Docker.
        assert_eq!(
            r.cmd,
            Some(vec!["--port".to_string(), "${PORT:-80}".to_string()])
        );
    }

    #[test]
    fn what_needs_a_real_builder_is_refused_with_its_line() {
        let (line, msg) = unsupported_at("FROM debian:bookworm\n");
        assert_eq!(line, 1);
        assert!(msg.contains("only FROM scratch"), "{msg}");
        let (line, msg) = unsupported_at("FROM scratch\nCOPY a /a\nRUN echo hi\n");
        assert_eq!(line, 3);
        assert!(msg.contains("RUN"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nENTRYPOINT /app --x\n");
        assert!(
            msg.contains("shell form") && msg.contains("exec form"),
            "{msg}"
        );
        let (_, msg) = unsupported_at("FROM scratch\nCMD echo hi\n");
        assert!(msg.contains("/bin/sh"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nFROM scratch\n");
        assert!(msg.contains("multi-stage"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nCOPY --from=build /a /a\n");
        assert!(msg.contains("--from"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nADD https://x.invalid/a /a\n");
        assert!(msg.contains("remote"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nADD rootfs.tar.gz /\n");
        assert!(msg.contains("archive"), "{msg}");
        let (_, msg) = unsupported_at("FROM scratch\nCOPY *.so /lib/\n");
        assert!(msg.contains("wildcard"), "{msg}");
        let (_, msg) = unsupported_at("ARG V=1\nFROM scratch\n");
        assert!(msg.contains("ARG"), "{msg}");
    }

    #[test]
    fn malformed_files_are_syntax_errors() {
        for (text, line) in [
            ("COPY a /a\n", 1),
            ("", 1),
            ("FROM scratch\nCOPY a\n", 2),
            ("FROM scratch\nENTRYPOINT [\"/a\"\n", 2),
            ("FROM scratch\nFROBNICATE x\n", 2),
            ("FROM scratch\nCOPY a \\\n", 2),
            ("FROM scratch\nENV A=\"x\n", 2),
        ] {
            match parse_scratch(text) {
                Err(DockerfileError::Syntax { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
                other => panic!("{text:?}: expected a syntax error, got {other:?}"),
            }
        }
    }

    #[test]
    fn paths_join_like_docker() {
        assert_eq!(join_abs("/", "a"), "/a");
        assert_eq!(join_abs("/srv", "../../etc/x"), "/etc/x");
        assert_eq!(join_abs("/srv", "/abs/"), "/abs");
        assert_eq!(join_abs("/srv", "."), "/srv");
    }
}
