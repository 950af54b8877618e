//! A re-placed `checkpoint = "criu"` instance restored from the images of its latest periodic
//! checkpoint ([`crate::heal::criu_images`]) instead of started afresh.
//!
//! The images are taken only from the service's owner (the peer that signed the spec): a
//! restore runs what the images say, as root, so they must come from the node that took them
//! from the instance's host (its ledger checks that host) and not from any member holding a
//! copy of the signed spec. On the process engine the task's files are laid out as for a
//! start, the images unpacked into a scratch directory, and `criu restore` brings the process
//! tree back in a new PID namespace with a fresh output pipe in place of its old one; on Docker
//! a runc bundle is laid out around an export of the image with the dumped container's config,
//! and `runc restore` makes a container Docker does not know. Either way the engine then adopts
//! the task, as it adopts one a live move restored here. The restored task listens and calls on
//! the ports it had, so its forwarders are bound there; if a port is taken, or anything else
//! fails, the restore is undone and the deployer starts the task fresh.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use brume_engine::runc_task::RuncTask;
use brume_engine::{
    criu_task, taskroot, AnyEngine, DockerEngine, ImageRef, LaunchSpec, ProcessEngine,
};
use brume_migration::checkpointer::{runc_usable, CriuRestore, Restorer};
use brume_migration::criu::{Criu, InheritFd, NetworkLock};
use brume_migration::live::scratch_dir;
use brume_overlay::PeerId;
use brume_tunnel::Forwarder;

use super::deployer::Deployer;
use super::wire::InstanceSpec;
use crate::heal::criu_images::{unpack, CriuImages};
use crate::migrate::live::docker::restore_bundle;

/// The most bytes the images of one checkpoint may unpack to (its archive is at most
/// [`crate::heal::checkpoints::MAX_CHECKPOINT`]; memory pages compress well, far less than
/// this).
const MAX_UNPACKED: u64 = 1 << 30;

impl Deployer {
    /// Restores `spec`'s task from `images` sent by `from`; its engine name, port and
    /// forwarders, or why not (nothing of the attempt is left then).
    pub(crate) async fn restore_from_images(
        &self,
        from: PeerId,
        spec: &InstanceSpec,
        image: ImageRef,
        images: CriuImages,
    ) -> Result<(String, u16, Vec<Forwarder>), String> {
        from_the_owner(from, spec)?;
        let launch = self.launch_spec(spec, image, spec.env.clone(), images.port);
        let staging = scratch_dir("restore-in");
        let restored = match &*self.engine {
            AnyEngine::Process(p) => {
                self.restore_process(p, spec, &launch, &images, &staging)
                    .await
            }
            AnyEngine::Docker(d) => {
                self.restore_docker(d, spec, &launch, &images, &staging)
                    .await
            }
        };
        let _ = std::fs::remove_dir_all(&staging);
        restored.map(|forwarders| (launch.name, launch.port, forwarders))
    }

    /// The process engine: `criu restore` of the process tree in a new PID namespace, adopted.
    async fn restore_process(
        &self,
        p: &ProcessEngine,
        spec: &InstanceSpec,
        launch: &LaunchSpec,
        images: &CriuImages,
        staging: &Path,
    ) -> Result<Vec<Forwarder>, String> {
        if images.bundle.is_some() {
            return Err("these are a Docker container's images; this node runs processes".into());
        }
        taskroot::available()?;
        p.lay_out(launch)
            .await
            .map_err(|e| format!("cannot lay the task's files out: {e}"))?;
        let (out, into_task) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
        let restorer = CriuRestore {
            criu: Criu::new(),
            network_lock: NetworkLock::Skip,
            pid_wait: Duration::ZERO,
            inherit_fds: images
                .stdout_key
                .iter()
                .map(|key| InheritFd {
                    key: key.clone(),
                    fd: into_task.as_raw_fd(),
                })
                .collect(),
            pid_namespace: true,
            root: Some(ProcessEngine::rootfs_of(launch)),
        };
        let restored = restore_in(staging, images, restorer).await;
        drop(into_task);
        let pid = match restored {
            Ok(pid) => pid,
            Err(why) => {
                p.drop_layout(launch).await;
                return Err(why);
            }
        };
        let adopted = match self.forwarders_at(spec, &images.call_ports).await {
            Ok((forwarders, _)) => p
                .adopt(launch, pid, Some(out))
                .await
                .map(|()| forwarders)
                .map_err(|e| format!("the engine cannot take it: {e}")),
            Err(e) => Err(format!(
                "its call forwarders cannot listen where it calls: {e}"
            )),
        };
        if adopted.is_err() {
            criu_task::kill(pid, libc::SIGKILL);
            p.drop_layout(launch).await;
        }
        adopted
    }

    /// The Docker engine: a runc container Docker does not know, from a bundle laid out around
    /// an export of the image, adopted as a live move's target adopts one.
    async fn restore_docker(
        &self,
        d: &DockerEngine,
        spec: &InstanceSpec,
        launch: &LaunchSpec,
        images: &CriuImages,
        staging: &Path,
    ) -> Result<Vec<Forwarder>, String> {
        runc_usable()?;
        let portable = images
            .bundle
            .clone()
            .ok_or("these are a process's images; this node runs its tasks on Docker")?;
        let runc = restore_bundle(d, spec, launch, portable).await?;
        let discard = |t: RuncTask| tokio::task::spawn_blocking(move || t.remove());
        let restored = restore_in(staging, images, runc.restore.clone()).await;
        let pid = match restored {
            Ok(pid) => pid,
            Err(why) => {
                let _ = discard(runc).await;
                return Err(why);
            }
        };
        let adopted = match self.forwarders_at(spec, &images.call_ports).await {
            Ok((forwarders, _)) => d
                .adopt(runc.clone())
                .map(|_| forwarders)
                .map_err(|e| format!("the engine cannot take it: {e}")),
            Err(e) => Err(format!(
                "its call forwarders cannot listen where it calls: {e}"
            )),
        };
        if adopted.is_err() {
            criu_task::kill(pid, libc::SIGKILL);
            let _ = discard(runc).await;
        }
        adopted
    }
}

/// Unpacks `images` into `staging` and restores them with `restorer`; the restored PID.
async fn restore_in(
    staging: &Path,
    images: &CriuImages,
    restorer: impl Restorer + 'static,
) -> Result<u32, String> {
    let work: PathBuf = staging.to_path_buf();
    let (archive, dumped_pid) = (images.archive.clone(), images.dumped_pid);
    tokio::task::spawn_blocking(move || -> Result<u32, String> {
        std::fs::create_dir_all(&work).map_err(|e| format!("cannot make a scratch dir: {e}"))?;
        unpack(&archive, &work, MAX_UNPACKED).map_err(|e| e.to_string())?;
        let log = work.with_extension("log");
        let r = restorer.restore(&work, dumped_pid, &log);
        if r.is_ok() {
            let _ = std::fs::remove_file(&log);
            let _ = std::fs::remove_dir_all(log.with_extension("work"));
        }
        let _ = std::fs::remove_file(log.with_extension("pid"));
        r.map(|r| r.pid).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| format!("the restore's thread failed: {e}"))?
}

/// Images are restored only when the peer that sent them owns the spec (its signature holds).
fn from_the_owner(from: PeerId, spec: &InstanceSpec) -> Result<(), String> {
    let owner = spec.owner().map_err(|e| e.to_string())?;
    if from != owner {
        return Err(format!(
            "the images came from {from}, not from the service's owner {owner}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Payload;
    use brume_tunnel::InstanceId;

    #[test]
    fn images_are_taken_from_the_owner_only() {
        let key = |seed: u8| {
            brume_overlay::Keypair::ed25519_from_bytes([seed; 32]).expect("an ed25519 key")
        };
        let (owner, member) = (key(1), key(2));
        let spec = InstanceSpec::new(
            InstanceId::new("web", "db", 0),
            1,
            Payload::Command(vec!["/bin/true".into()]),
            100,
            64,
        );
        let signed = spec.clone().signed(&owner);
        let of = |k: &brume_overlay::Keypair| k.public().to_peer_id();
        assert_eq!(from_the_owner(of(&owner), &signed), Ok(()));
        let e = from_the_owner(of(&member), &signed).unwrap_err();
        assert!(e.contains("not from the service's owner"), "{e}");
        // Unsigned: nobody owns it, so nobody's images are taken.
        assert!(from_the_owner(of(&owner), &spec).is_err());
    }
}
