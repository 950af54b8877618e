//! Running one system call inside another process, as that process: what creates a
//! userfaultfd in a task's own address space (a userfaultfd belongs to the address space of
//! whoever calls `userfaultfd(2)`, and no other interface makes one for a different process).
//!
//! The technique is compel's (CRIU's parasite loader), reduced to one instruction:
//! `PTRACE_SEIZE` the task's main thread (with `PTRACE_O_SUSPEND_SECCOMP`, since Docker's
//! default profile denies `userfaultfd`), `PTRACE_INTERRUPT` it, save its registers, point the
//! instruction pointer at a `syscall` instruction already in the task (its `[vdso]` has some),
//! load the call's number and arguments, single-step over that one instruction, read the result
//! and put every register back before detaching. `orig_rax = -1` while ours run keeps the
//! kernel's restart logic away from them; once the saved registers are back, a system call the
//! task was blocked in when interrupted restarts exactly as after any signal. A signal that
//! arrives for the task meanwhile is held back and delivered at detach.
//!
//! x86_64 only; elsewhere [`Session::seize`] says so and the tracker falls back.

use std::io;

use super::TrackError;

/// What one injected call returned: the raw `rax` (a negative errno on failure).
pub type Ret = i64;

/// The task's main thread, seized and stopped; calls run in it one after another and the
/// task gets its registers back, and runs on, when this is dropped.
#[cfg(target_arch = "x86_64")]
pub struct Session {
    seized: Seized,
    at: u64,
}

#[cfg(target_arch = "x86_64")]
impl Session {
    pub fn seize(pid: i32) -> Result<Self, TrackError> {
        let at = find_syscall_insn(pid)?;
        Ok(Session {
            seized: Seized::seize(pid)?,
            at,
        })
    }

    /// Runs system call `nr` with `args` in the task; the raw result (negative errno).
    pub fn call(&mut self, nr: i64, args: [u64; 6]) -> Result<Ret, TrackError> {
        self.seized.run(self.at, nr, args)
    }
}

#[cfg(not(target_arch = "x86_64"))]
pub struct Session;

#[cfg(not(target_arch = "x86_64"))]
impl Session {
    pub fn seize(_pid: i32) -> Result<Self, TrackError> {
        Err(TrackError::Unsupported(
            "injecting a system call is implemented for x86_64 only".into(),
        ))
    }

    pub fn call(&mut self, _nr: i64, _args: [u64; 6]) -> Result<Ret, TrackError> {
        unreachable!("no session can exist on this architecture")
    }
}

/// The address of a `syscall` instruction (0f 05) in the task's `[vdso]`.
#[cfg(target_arch = "x86_64")]
fn find_syscall_insn(pid: i32) -> Result<u64, TrackError> {
    let maps = super::maps::read(pid)?;
    let vdso = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| TrackError::Unsupported(format!("process {pid} has no [vdso]")))?;
    let mut code = vec![0u8; (vdso.end - vdso.start) as usize];
    super::memory::read_exact(pid, vdso.start, &mut code)
        .map_err(|e| TrackError::Process(pid, "reading its [vdso]", e))?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| vdso.start + i as u64)
        .ok_or_else(|| TrackError::Unsupported(format!("no syscall instruction in {pid}'s [vdso]")))
}

/// A seized, stopped main thread; detaching (on drop too) puts back what was taken.
#[cfg(target_arch = "x86_64")]
struct Seized {
    pid: i32,
    saved: Option<libc::user_regs_struct>,
    /// Signals that arrived while we held the task, delivered when we let it go.
    held: Vec<i32>,
}

#[cfg(target_arch = "x86_64")]
impl Seized {
    fn seize(pid: i32) -> Result<Self, TrackError> {
        let opts = libc::PTRACE_O_SUSPEND_SECCOMP;
        // SAFETY: PTRACE_SEIZE takes no pointer; the options are a plain integer.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0, opts) };
        if r < 0 {
            return Err(TrackError::Process(
                pid,
                "PTRACE_SEIZE (is another tracer attached, or a debugger?)",
                io::Error::last_os_error(),
            ));
        }
        let mut me = Seized {
            pid,
            saved: None,
            held: Vec::new(),
        };
        // SAFETY: PTRACE_INTERRUPT takes no pointer.
        if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0, 0) } < 0 {
            return Err(TrackError::Process(
                pid,
                "PTRACE_INTERRUPT",
                io::Error::last_os_error(),
            ));
        }
        me.wait_stop()?;
        Ok(me)
    }

    /// Waits for the next stop; a signal-delivery stop of another signal is held back.
    fn wait_stop(&mut self) -> Result<(), TrackError> {
        let mut status = 0;
        loop {
            // SAFETY: status is a valid out pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, libc::__WALL) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(TrackError::Process(self.pid, "waitpid", e));
            }
            break;
        }
        if !libc::WIFSTOPPED(status) {
            return Err(TrackError::Process(
                self.pid,
                "waiting for it to stop",
                io::Error::other(format!("it ended (wait status {status:#x})")),
            ));
        }
        // Our interrupt (PTRACE_EVENT_STOP) and the step's trap are ours; any other stop is a
        // signal on its way to the task, held back until we let go.
        let sig = libc::WSTOPSIG(status);
        let event = (status >> 16) & 0xff;
        if event != libc::PTRACE_EVENT_STOP && sig != libc::SIGTRAP {
            self.held.push(sig);
        }
        Ok(())
    }

    fn regs(&self) -> Result<libc::user_regs_struct, TrackError> {
        // SAFETY: user_regs_struct is plain data; zeroed is a valid value.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        // SAFETY: PTRACE_GETREGS writes one user_regs_struct to the pointer given.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_GETREGS,
                self.pid,
                0,
                &mut regs as *mut libc::user_regs_struct,
            )
        };
        if r < 0 {
            return Err(TrackError::Process(
                self.pid,
                "PTRACE_GETREGS",
                io::Error::last_os_error(),
            ));
        }
        Ok(regs)
    }

    fn set_regs(&self, regs: &libc::user_regs_struct) -> Result<(), TrackError> {
        // SAFETY: PTRACE_SETREGS reads one user_regs_struct from the pointer given.
        let r = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGS,
                self.pid,
                0,
                regs as *const libc::user_regs_struct,
            )
        };
        if r < 0 {
            return Err(TrackError::Process(
                self.pid,
                "PTRACE_SETREGS",
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn run(&mut self, at: u64, nr: i64, args: [u64; 6]) -> Result<Ret, TrackError> {
        let saved = match self.saved {
            Some(saved) => saved,
            None => {
                let saved = self.regs()?;
                self.saved = Some(saved);
                saved
            }
        };
        let mut regs = saved;
        regs.rip = at;
        regs.rax = nr as u64;
        regs.orig_rax = u64::MAX;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        self.set_regs(&regs)?;
        // Each step either executes the instruction (and stops right after it) or is cut short
        // by a stop that comes first; bounded, a task cannot keep us here.
        for _ in 0..64 {
            // SAFETY: PTRACE_SINGLESTEP takes no pointer; signal 0 delivers nothing.
            if unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0, 0) } < 0 {
                return Err(TrackError::Process(
                    self.pid,
                    "PTRACE_SINGLESTEP",
                    io::Error::last_os_error(),
                ));
            }
            self.wait_stop()?;
            let now = self.regs()?;
            if now.rip == at + 2 {
                return Ok(now.rax as i64);
            }
            if now.rip != at {
                return Err(TrackError::Process(
                    self.pid,
                    "single-stepping the injected call",
                    io::Error::other(format!("it went to {:#x}, not past {at:#x}", now.rip)),
                ));
            }
        }
        Err(TrackError::Process(
            self.pid,
            "single-stepping the injected call",
            io::Error::other("it never executed (64 stops first)"),
        ))
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Seized {
    fn drop(&mut self) {
        if let Some(saved) = self.saved.take() {
            if let Err(e) = self.set_regs(&saved) {
                // Nothing else can put them back; the task will likely fault. Say so loudly.
                tracing::error!(
                    pid = self.pid,
                    "could not restore registers after injecting a call: {e}"
                );
            }
        }
        let first = self.held.first().copied().unwrap_or(0);
        // SAFETY: PTRACE_DETACH takes the signal to deliver as data.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.pid, 0, first as libc::c_long) };
        for &sig in self.held.iter().skip(1) {
            // SAFETY: kill with a signal number the kernel gave us.
            unsafe { libc::kill(self.pid, sig) };
        }
    }
}
