//! Which engine a node runs: the `engine` setting says `docker`, `process` or `auto`. With
//! `auto` the node uses Docker when a daemon answers within about a second, and otherwise the
//! embedded process engine, and logs which one it took and why. Asking for `docker` when no
//! daemon answers is an error rather than a silent fallback: the operator asked for isolation.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::EngineError;
use super::{AnyEngine, DockerEngine, ProcessEngine};

/// How long `auto` waits for the Docker daemon to answer.
pub const AUTO_PROBE: Duration = Duration::from_secs(1);

/// The `engine` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EngineChoice {
    /// Docker if its daemon answers, else the process engine.
    #[default]
    Auto,
    /// The Docker daemon; an error if it does not answer.
    Docker,
    /// Tasks as plain child processes.
    Process,
}

impl std::fmt::Display for EngineChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Docker => "docker",
            EngineChoice::Process => "process",
        })
    }
}

impl std::str::FromStr for EngineChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "docker" => Ok(EngineChoice::Docker),
            "process" => Ok(EngineChoice::Process),
            other => Err(format!(
                "engine {other:?} is not one of docker, process, auto"
            )),
        }
    }
}

impl TryFrom<&str> for EngineChoice {
    type Error = EngineError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse().map_err(|why| EngineError::BadSetting { why })
    }
}

impl TryFrom<&String> for EngineChoice {
    type Error = EngineError;

    fn try_from(s: &String) -> Result<Self, Self::Error> {
        EngineChoice::try_from(s.as_str())
    }
}

/// Opens the engine the setting names (an [`EngineChoice`] or its text, `"docker"`,
/// `"process"` or `"auto"`). `process_root` is where the process engine keeps its images and
/// task directories (used only when it is chosen). Docker is reached at `DOCKER_HOST`, else the
/// local socket.
pub async fn pick<C>(choice: C, process_root: impl AsRef<Path>) -> Result<AnyEngine, EngineError>
where
    C: TryInto<EngineChoice>,
    C::Error: Into<EngineError>,
{
    let choice = choice.try_into().map_err(Into::into)?;
    pick_at(choice, process_root, &super::docker::endpoint()).await
}

/// [`pick`] with the Docker endpoint given (`unix:///path` or `tcp://host:port`).
pub async fn pick_at(
    choice: EngineChoice,
    process_root: impl AsRef<Path>,
    docker_host: &str,
) -> Result<AnyEngine, EngineError> {
    let process_root = process_root.as_ref().to_path_buf();
    match choice {
        EngineChoice::Docker => {
            let docker = DockerEngine::connect_to(docker_host, Duration::from_secs(5)).await?;
            tracing::info!(
                endpoint = docker.endpoint(),
                "engine: docker (as configured)"
            );
            Ok(AnyEngine::Docker(docker))
        }
        EngineChoice::Process => {
            tracing::info!(root = %process_root.display(), "engine: process (as configured)");
            Ok(AnyEngine::Process(ProcessEngine::new(process_root)?))
        }
        EngineChoice::Auto => match DockerEngine::connect_to(docker_host, AUTO_PROBE).await {
            Ok(docker) => {
                tracing::info!(
                    endpoint = docker.endpoint(),
                    "engine: docker (engine = auto and the Docker daemon answered)"
                );
                Ok(AnyEngine::Docker(docker))
            }
            Err(why) => {
                tracing::info!(
                    root = %process_root.display(),
                    "engine: process (engine = auto and Docker is not usable: {why})"
                );
                Ok(AnyEngine::Process(ProcessEngine::new(process_root)?))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_parses() {
        assert_eq!("Docker".parse::<EngineChoice>(), Ok(EngineChoice::Docker));
        assert_eq!(" auto ".parse::<EngineChoice>(), Ok(EngineChoice::Auto));
        let err = "podman".parse::<EngineChoice>().unwrap_err();
        assert!(err.contains("docker, process, auto"), "{err}");
        let toml: EngineChoice = serde_json::from_str("\"process\"").unwrap();
        assert_eq!(toml, EngineChoice::Process);
        assert!(EngineChoice::try_from("lxc")
            .unwrap_err()
            .to_string()
            .contains("engine \"lxc\" is not one of"));
    }

    #[tokio::test]
    async fn auto_falls_back_to_processes_when_no_daemon_answers_and_docker_refuses() {
        let dir = tempfile::tempdir().unwrap();
        // Bound without SO_REUSEADDR and never listened on: every connection is refused, and
        // nothing else can listen there while `closed` lives.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed
            .bind((std::net::Ipv4Addr::LOCALHOST, 0).into())
            .unwrap();
        let port = closed.local_addr().unwrap().port();
        let missing_socket = format!("unix://{}", dir.path().join("no.sock").display());
        for host in [format!("tcp://127.0.0.1:{port}"), missing_socket] {
            // The bound turns a hang into a failure; how fast the fallback is is not asserted.
            let engine = tokio::time::timeout(
                Duration::from_secs(60),
                pick_at(EngineChoice::Auto, dir.path().join("p"), &host),
            )
            .await
            .unwrap_or_else(|_| panic!("{host}: auto hung"))
            .unwrap();
            assert_eq!(engine.kind(), "process", "{host}");
            let err = pick_at(EngineChoice::Docker, dir.path().join("p"), &host)
                .await
                .unwrap_err();
            assert!(
                err.to_string().contains("does not answer") && err.to_string().contains("process"),
                "{err}"
            );
        }
    }

    /// A listener that accepts and never answers: `auto` must give up (it waits about a second;
    /// the test only bounds it, generously, so a hang fails).
    #[tokio::test]
    async fn auto_does_not_hang_on_a_silent_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = silent.local_addr().unwrap().port();
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let engine = tokio::time::timeout(
            Duration::from_secs(60),
            pick_at(
                EngineChoice::Auto,
                dir.path().to_path_buf(),
                &format!("tcp://127.0.0.1:{port}"),
            ),
        )
        .await
        .expect("auto hung on a silent daemon")
        .unwrap();
        assert_eq!(engine.kind(), "process");
    }
}
