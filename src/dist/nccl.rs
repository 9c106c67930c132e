//! The NCCL backend: one rank per GPU, in one process (group calls) or one process per
//! GPU (ranks joined by NCCL unique ids).
//!
//! Each group of `axis_index_groups` gets its own communicator, created with cudarc's safe
//! API (`ncclCommInitAll` over the group's GPUs in one process, `ncclCommInitRank` with the
//! group's own unique id across processes): a rank's collectives then run over exactly its
//! group, and a rank's position in the group is its NCCL rank. (Splitting one world
//! communicator with `ncclCommSplit` would need raw communicator handles, which cudarc's
//! safe `Comm` does not expose; one id per group is all it costs instead.)
//!
//! Everything that can be checked is checked before NCCL is touched: the groups are an
//! [`AxisGroups`] (valid by construction), the ids match the groups, and libnccl can be
//! loaded (cudarc would panic on first use without it).

use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceSlice};
use cudarc::nccl::{group_end, group_start, Comm, Id, ReduceOp};

use super::collective::{check_count, check_equal_lens, check_gather_lens, Membership};
use super::deadline::Deadline;
use super::{AxisGroups, Buf, BufMut, Collective};
use crate::cuda::nccl::SendComm;
use crate::cuda::CudaBackend;
use crate::{Device, Error, Result};

/// How to make libnccl loadable, for error messages and docs.
const NCCL_HINT: &str = "libnccl could not be loaded. warpnorm loads NCCL at run time under the \
name libnccl.so (cudarc's loader does not look for libnccl.so.2). With the pip wheel \
(`pip install nvidia-nccl-cu13`), which ships only libnccl.so.2, make a folder with a \
`libnccl.so` symlink to it and put that folder on LD_LIBRARY_PATH, e.g.\n  \
mkdir -p ~/.local/lib/nccl && ln -sf \"$(find \"$(python3 -c 'import site; \
print(site.getsitepackages()[0])')/nvidia\" -name 'libnccl.so.2' | head -n1)\" \
~/.local/lib/nccl/libnccl.so && export LD_LIBRARY_PATH=~/.local/lib/nccl:$LD_LIBRARY_PATH";

/// `Ok` when libnccl can be loaded, else [`Error::Nccl`] saying how to provide it. Never
/// panics (cudarc panics on the first NCCL call without the library).
pub fn nccl_available() -> Result<()> {
    // The first name cudarc's loader tries: found there, cudarc finds it too.
    if crate::cuda::library_loads(&["libnccl.so"]) {
        Ok(())
    } else {
        Err(Error::Nccl(NCCL_HINT.into()))
    }
}

/// How long [`NcclCollective::multi_process`] waits for the other ranks to join: as long
/// as a collective may take, since ranks start as unevenly as they run.
pub const DEFAULT_JOIN_TIMEOUT: Duration = super::DEFAULT_COLLECTIVE_TIMEOUT;

/// Runs `work` on a thread of its own and waits for its result at most `timeout`:
/// `Err(Timeout)` when it did not finish in time (the thread is then left to finish, or
/// block, alone), `Err(Disconnected)` when it panicked or could not start.
fn within<T: Send + 'static>(
    timeout: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::result::Result<T, RecvTimeoutError> {
    let (done, result) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("warpnorm-nccl-join".into())
        .spawn(move || {
            let _ = done.send(work());
        });
    if started.is_err() {
        return Err(RecvTimeoutError::Disconnected);
    }
    result.recv_timeout(timeout)
}

fn nccl_error(what: &str, e: cudarc::nccl::result::NcclError) -> Error {
    Error::Nccl(format!("{what} failed: {:?}", e.0))
}

/// NCCL unique ids, one per group of `axis_index_groups` (in group order): what the
/// processes of a multi-process run must share before they can communicate.
///
/// One process creates them with [`NcclIds::generate`] and hands them to every rank: as
/// hex text in an environment variable ([`NcclIds::ENV_VAR`]) or in a file. NCCL's
/// bootstrap listens in the process that generated the ids, so that process must stay
/// alive until every rank has joined.
#[derive(Clone, Debug)]
pub struct NcclIds {
    ids: Vec<Id>,
}

/// Bytes of one NCCL unique id.
const ID_BYTES: usize = 128;

impl NcclIds {
    /// The environment variable [`NcclIds::from_env`] reads.
    pub const ENV_VAR: &'static str = "WARPNORM_NCCL_ID";

    /// `count` fresh ids (one per group). Needs libnccl, not a GPU.
    pub fn generate(count: usize) -> Result<NcclIds> {
        nccl_available()?;
        let ids = (0..count)
            .map(|_| Id::new().map_err(|e| nccl_error("ncclGetUniqueId", e)))
            .collect::<Result<_>>()?;
        Ok(NcclIds { ids })
    }

    /// One fresh id per group of `groups`.
    pub fn for_groups(groups: &AxisGroups) -> Result<NcclIds> {
        NcclIds::generate(groups.groups().len())
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The ids as hex (256 digits each), comma-separated.
    pub fn to_hex(&self) -> String {
        self.ids
            .iter()
            .map(|id| {
                id.internal()
                    .iter()
                    .map(|&b| format!("{:02x}", b as u8))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Parses [`NcclIds::to_hex`] (surrounding whitespace is ignored).
    pub fn from_hex(text: &str) -> Result<NcclIds> {
        let bad = |msg: String| Error::InvalidConfig(format!("NCCL unique ids: {msg}"));
        let ids = text
            .trim()
            .split(',')
            .enumerate()
            .map(|(i, hex)| {
                let hex = hex.trim();
                if hex.len() != 2 * ID_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad(format!(
                        "id {i} must be {} hex digits, got {} characters",
                        2 * ID_BYTES,
                        hex.len()
                    )));
                }
                let mut internal = [0 as std::ffi::c_char; ID_BYTES];
                for (j, byte) in internal.iter_mut().enumerate() {
                    let v = u8::from_str_radix(&hex[2 * j..2 * j + 2], 16)
                        .map_err(|e| bad(format!("id {i}: {e}")))?;
                    *byte = v as std::ffi::c_char;
                }
                Ok(Id::uninit(internal))
            })
            .collect::<Result<_>>()?;
        Ok(NcclIds { ids })
    }

    /// Reads the ids from the environment variable [`NcclIds::ENV_VAR`].
    pub fn from_env() -> Result<NcclIds> {
        let text = std::env::var(NcclIds::ENV_VAR).map_err(|e| {
            Error::InvalidConfig(format!(
                "{}: {e} (expected NCCL unique ids as hex)",
                NcclIds::ENV_VAR
            ))
        })?;
        NcclIds::from_hex(&text)
    }

    /// Writes the ids to `path` atomically (a temporary file renamed into place), so a
    /// rank polling for the file never reads half of it.
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        std::fs::write(&tmp, self.to_hex() + "\n")?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Reads ids written by [`NcclIds::write_file`].
    pub fn read_file(path: impl AsRef<Path>) -> Result<NcclIds> {
        NcclIds::from_hex(&std::fs::read_to_string(path)?)
    }

    /// Waits up to `timeout` for another process to write the file, then reads it.
    pub fn wait_for_file(path: impl AsRef<Path>, timeout: Duration) -> Result<NcclIds> {
        let path = path.as_ref();
        let start = Instant::now();
        while !path.exists() {
            if start.elapsed() > timeout {
                return Err(Error::Nccl(format!(
                    "no NCCL id file appeared at {} within {timeout:?}",
                    path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        NcclIds::read_file(path)
    }

    fn get(&self, group: usize) -> Result<Id> {
        self.ids.get(group).copied().ok_or_else(|| {
            Error::InvalidConfig(format!(
                "{} NCCL unique id(s) for group {group}: one id per group of axis_index_groups is needed",
                self.ids.len()
            ))
        })
    }
}

/// NCCL communicators for the local ranks of one axis.
///
/// `Send + Sync`: calls are serialised on an internal lock, as NCCL requires for a
/// communicator. Every collective has a deadline ([`NcclCollective::set_timeout`],
/// [`crate::dist::DEFAULT_COLLECTIVE_TIMEOUT`] by default): one that does not finish in time (a peer
/// rank failed or stopped) aborts the communicators, so that no rank waits forever, and
/// every later call returns an error. Creating the communicators across processes
/// ([`NcclCollective::multi_process`]) waits for the group's other ranks at most
/// [`DEFAULT_JOIN_TIMEOUT`] (or the time given to [`NcclCollective::multi_process_within`]).
pub struct NcclCollective {
    members: Membership,
    /// One per local rank: its group's communicator, on the rank's backend stream.
    comms: Deadline,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("members", &self.members)
            .field("timeout", &self.timeout())
            .finish()
    }
}

impl NcclCollective {
    /// One process drives every rank: rank r runs on `backends[r]`, one GPU each (NCCL
    /// rejects two ranks on one GPU; use [`super::InProcessCuda`] for that).
    pub fn single_process(
        backends: &[Arc<CudaBackend>],
        axis_name: impl Into<String>,
        groups: AxisGroups,
    ) -> Result<NcclCollective> {
        if backends.len() != groups.world() {
            return Err(Error::Shape {
                what: "backends",
                expected: format!("one per rank of the world ({})", groups.world()),
                got: backends.len().to_string(),
            });
        }
        for (r, be) in backends.iter().enumerate() {
            let ordinal = be.info().ordinal;
            if let Some(q) = backends[..r]
                .iter()
                .position(|b| b.info().ordinal == ordinal)
            {
                return Err(Error::Unsupported(format!(
                    "ranks {q} and {r} are both on cuda:{ordinal}: NCCL needs one GPU per rank \
                     (InProcessCuda runs several ranks on one GPU)"
                )));
            }
        }
        let devices = backends.iter().map(|b| Device::Cuda(b.clone())).collect();
        let members = Membership::whole_world(axis_name, groups, devices)?;
        nccl_available()?;
        let groups = members.groups();
        let mut comms: Vec<Option<Comm>> = (0..groups.world()).map(|_| None).collect();
        for group in groups.groups() {
            let streams: Vec<Arc<CudaStream>> = group
                .iter()
                .map(|&r| backends[r].stream().clone())
                .collect();
            let group_comms =
                Comm::from_devices(streams).map_err(|e| nccl_error("ncclCommInitAll", e))?;
            for (&r, comm) in group.iter().zip(group_comms) {
                comms[r] = Some(comm);
            }
        }
        let comms = comms
            .into_iter()
            .map(|c| c.ok_or_else(|| Error::Nccl("a rank got no communicator".into())))
            .collect::<Result<_>>()?;
        Ok(NcclCollective {
            members,
            comms: Deadline::new(comms)?,
        })
    }

    /// This process is world rank `rank` on `backend`; `ids` holds one unique id per
    /// group, the same in every process. Waits for every rank of the group to join, at
    /// most [`DEFAULT_JOIN_TIMEOUT`] (see [`NcclCollective::multi_process_within`]).
    pub fn multi_process(
        backend: Arc<CudaBackend>,
        rank: usize,
        axis_name: impl Into<String>,
        groups: AxisGroups,
        ids: &NcclIds,
    ) -> Result<NcclCollective> {
        Self::multi_process_within(backend, rank, axis_name, groups, ids, DEFAULT_JOIN_TIMEOUT)
    }

    /// [`NcclCollective::multi_process`], waiting at most `timeout` for the other ranks
    /// of the group to join. When one never arrives (it crashed, or was given other ids)
    /// this returns [`Error::Nccl`] instead of blocking forever. NCCL's blocking join
    /// cannot be cancelled, so the waiting thread is left behind, still holding the
    /// unique id: treat the error as fatal for the process (exit, and start every rank
    /// again with new ids).
    pub fn multi_process_within(
        backend: Arc<CudaBackend>,
        rank: usize,
        axis_name: impl Into<String>,
        groups: AxisGroups,
        ids: &NcclIds,
        timeout: Duration,
    ) -> Result<NcclCollective> {
        let device = Device::Cuda(backend.clone());
        let members = Membership::new(axis_name, groups, vec![rank], vec![device])?;
        let groups = members.groups();
        let (Some(group), Some(position)) = (groups.group_of(rank), groups.position(rank)) else {
            return Err(Error::InvalidConfig(format!(
                "rank {rank} is outside the world 0..{}",
                groups.world()
            )));
        };
        if ids.len() != groups.groups().len() {
            return Err(Error::InvalidConfig(format!(
                "{} NCCL unique id(s) for {} group(s): one id per group of axis_index_groups, in group order",
                ids.len(),
                groups.groups().len()
            )));
        }
        let id = ids.get(group)?;
        nccl_available()?;
        let size = groups.group_size();
        let stream = backend.stream().clone();
        let joined = within(timeout, move || -> Result<SendComm> {
            // ncclCommInitRank takes the calling thread's current device.
            stream.context().bind_to_thread()?;
            Comm::from_rank(stream, position, size, id)
                .map(SendComm)
                .map_err(|e| nccl_error("ncclCommInitRank", e))
        });
        let comm = match joined {
            Ok(comm) => comm?.0,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(Error::Nccl(
                    "the thread joining the NCCL group failed to start or panicked".into(),
                ))
            }
            Err(RecvTimeoutError::Timeout) => {
                return Err(Error::Nccl(format!(
                    "rank {rank} waited {timeout:?} for the other {} rank(s) of its group \
                     (group {group}) to join, and at least one never did (it failed, or was \
                     given other ids); the join cannot be cancelled: end this process and \
                     start every rank again",
                    size - 1
                )))
            }
        };
        Ok(NcclCollective {
            members,
            comms: Deadline::new(vec![comm])?,
        })
    }

    /// How long a collective may run before the communicators are aborted.
    pub fn timeout(&self) -> Duration {
        self.comms.timeout()
    }

    /// Sets the deadline of every later collective (see the type's docs). Use the same
    /// value on every rank, longer than the slowest rank may lag behind the others.
    pub fn set_timeout(&self, timeout: Duration) {
        self.comms.set_timeout(timeout);
    }

    /// Errors unless local rank i's buffer is on its rank's GPU.
    fn check_device(&self, i: usize, stream: Option<&Arc<CudaStream>>) -> Result<()> {
        let Device::Cuda(be) = &self.devices()[i] else {
            return Err(Error::Unsupported("an NCCL rank on the CPU".into()));
        };
        match stream {
            Some(s) if Arc::ptr_eq(s.context(), be.context()) => Ok(()),
            Some(_) => Err(Error::Unsupported(format!(
                "the buffer of rank {} is not on its GPU cuda:{}",
                self.local_ranks()[i],
                be.info().ordinal
            ))),
            None => Err(Error::Unsupported(
                "a host buffer was passed to the NCCL collective".into(),
            )),
        }
    }
}

/// Runs `op` for every local rank, inside one NCCL group call when this process drives
/// several GPUs (one thread issuing collectives for several devices must).
fn for_each_rank(comms: &[&Comm], mut op: impl FnMut(usize) -> Result<()>) -> Result<()> {
    if comms.len() == 1 {
        comms[0].context().bind_to_thread()?;
        return op(0);
    }
    group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
    let mut result = Ok(());
    for (i, comm) in comms.iter().enumerate() {
        result = comm
            .context()
            .bind_to_thread()
            .map_err(Error::from)
            .and_then(|()| op(i));
        if result.is_err() {
            break;
        }
    }
    let end = group_end().map_err(|e| nccl_error("ncclGroupEnd", e));
    result.and(end.map(|_| ()))
}

fn cuda_stream<'b>(b: &'b BufMut<'_>) -> Option<&'b Arc<CudaStream>> {
    match b {
        BufMut::Cuda(v) => Some(v.stream()),
        BufMut::Host(_) => None,
    }
}

/// Records a buffer's use on its rank's stream again after a group call: cudarc records
/// it when the call returns, but inside a group NCCL enqueues the work only at
/// `ncclGroupEnd`, so the record must come after that for other streams to wait right.
fn touch(buf: &mut BufMut<'_>, stream: &CudaStream) {
    if let BufMut::Cuda(v) = buf {
        let _ = v.device_ptr_mut(stream);
    }
}

impl Collective for NcclCollective {
    fn membership(&self) -> &Membership {
        &self.members
    }

    fn all_reduce_sum(&self, bufs: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_reduce_sum buffers", bufs.len())?;
        for (i, b) in bufs.iter().enumerate() {
            self.check_device(i, cuda_stream(b))?;
        }
        check_equal_lens("all_reduce_sum buffer", bufs.iter().map(BufMut::len), None)?;
        self.comms.collective("ncclAllReduce", |comms| {
            for_each_rank(comms, |i| match &mut bufs[i] {
                BufMut::Cuda(v) => comms[i]
                    .all_reduce_in_place(v, &ReduceOp::Sum)
                    .map(|_| ())
                    .map_err(|e| nccl_error("ncclAllReduce", e)),
                BufMut::Host(_) => Err(Error::Unsupported("a host buffer in an NCCL call".into())),
            })?;
            if comms.len() > 1 {
                for (b, comm) in bufs.iter_mut().zip(comms) {
                    touch(b, &comm.stream());
                }
            }
            Ok(())
        })
    }

    fn all_gather(&self, send: &[Buf<'_>], recv: &mut [BufMut<'_>]) -> Result<()> {
        check_count(self, "all_gather send buffers", send.len())?;
        check_count(self, "all_gather recv buffers", recv.len())?;
        for (i, b) in send.iter().enumerate() {
            let stream = match b {
                Buf::Cuda(v) => Some(v.stream()),
                Buf::Host(_) => None,
            };
            self.check_device(i, stream)?;
        }
        for (i, b) in recv.iter().enumerate() {
            self.check_device(i, cuda_stream(b))?;
        }
        let k = self.groups().group_size();
        check_gather_lens(k, send.iter().map(Buf::len), recv.iter().map(BufMut::len))?;
        self.comms.collective("ncclAllGather", |comms| {
            for_each_rank(comms, |i| match (&send[i], &mut recv[i]) {
                (Buf::Cuda(s), BufMut::Cuda(r)) => comms[i]
                    .all_gather(s, r)
                    .map(|_| ())
                    .map_err(|e| nccl_error("ncclAllGather", e)),
                _ => Err(Error::Unsupported("a host buffer in an NCCL call".into())),
            })?;
            if comms.len() > 1 {
                for ((s, r), comm) in send.iter().zip(recv.iter_mut()).zip(comms) {
                    let stream = comm.stream();
                    if let Buf::Cuda(v) = s {
                        let _ = v.device_ptr(&stream);
                    }
                    touch(r, &stream);
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_returns_what_finishes_in_time() {
        assert_eq!(within(Duration::from_secs(10), || 7), Ok(7));
    }

    #[test]
    fn within_gives_up_on_what_never_finishes() {
        let start = Instant::now();
        let blocked = within(Duration::from_millis(200), || loop {
            std::thread::park();
        });
        assert_eq!(blocked, Err(RecvTimeoutError::Timeout));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn within_reports_a_panic_as_disconnected() {
        let r: std::result::Result<(), _> =
            within(Duration::from_secs(10), || panic!("join failed"));
        assert_eq!(r, Err(RecvTimeoutError::Disconnected));
    }
}
