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
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceSlice};
use cudarc::nccl::{group_end, group_start, Comm, Id, ReduceOp};

use super::collective::{check_count, check_equal_lens, check_gather_lens, Membership};
use super::{AxisGroups, Buf, BufMut, Collective};
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
    // SAFETY: only tries to dlopen the library by name; no NCCL function is called.
    #[cfg(not(feature = "candle-cuda"))]
    let present = unsafe { cudarc::nccl::sys::is_culib_present() };
    // Linked at build time with candle's CUDA (cudarc's `dynamic-linking`).
    #[cfg(feature = "candle-cuda")]
    let present = true;
    if present {
        Ok(())
    } else {
        Err(Error::Nccl(NCCL_HINT.into()))
    }
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
/// Not `Send`: cudarc's `Comm` is not, as NCCL communicators must not be used from two
/// threads at once.
#[derive(Debug)]
pub struct NcclCollective {
    members: Membership,
    /// One per local rank: its group's communicator, on the rank's backend stream.
    comms: Vec<Comm>,
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
        Ok(NcclCollective { members, comms })
    }

    /// This process is world rank `rank` on `backend`; `ids` holds one unique id per
    /// group, the same in every process. Blocks until every rank of the group has joined.
    pub fn multi_process(
        backend: Arc<CudaBackend>,
        rank: usize,
        axis_name: impl Into<String>,
        groups: AxisGroups,
        ids: &NcclIds,
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
        // ncclCommInitRank takes the calling thread's current device.
        backend.context().bind_to_thread()?;
        let comm = Comm::from_rank(backend.stream().clone(), position, groups.group_size(), id)
            .map_err(|e| nccl_error("ncclCommInitRank", e))?;
        Ok(NcclCollective {
            members,
            comms: vec![comm],
        })
    }

    /// Errors unless local rank i's buffer is on its rank's GPU.
    fn check_device(&self, i: usize, stream: Option<&Arc<CudaStream>>) -> Result<()> {
        let comm = &self.comms[i];
        match stream {
            Some(s) if Arc::ptr_eq(s.context(), comm.context()) => Ok(()),
            Some(_) => Err(Error::Unsupported(format!(
                "the buffer of rank {} is not on its GPU cuda:{}",
                self.local_ranks()[i],
                comm.ordinal()
            ))),
            None => Err(Error::Unsupported(
                "a host buffer was passed to the NCCL collective".into(),
            )),
        }
    }

    /// Runs `op` for every local rank, inside one NCCL group call when this process
    /// drives several GPUs (one thread issuing collectives for several devices must).
    fn for_each_rank(&self, mut op: impl FnMut(usize) -> Result<()>) -> Result<()> {
        if self.comms.len() == 1 {
            self.comms[0].context().bind_to_thread()?;
            return op(0);
        }
        group_start().map_err(|e| nccl_error("ncclGroupStart", e))?;
        let mut result = Ok(());
        for i in 0..self.comms.len() {
            result = self.comms[i]
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
        self.for_each_rank(|i| match &mut bufs[i] {
            BufMut::Cuda(v) => self.comms[i]
                .all_reduce_in_place(v, &ReduceOp::Sum)
                .map(|_| ())
                .map_err(|e| nccl_error("ncclAllReduce", e)),
            BufMut::Host(_) => Err(Error::Unsupported("a host buffer in an NCCL call".into())),
        })?;
        if self.comms.len() > 1 {
            for (b, comm) in bufs.iter_mut().zip(&self.comms) {
                touch(b, &comm.stream());
            }
        }
        Ok(())
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
        self.for_each_rank(|i| match (&send[i], &mut recv[i]) {
            (Buf::Cuda(s), BufMut::Cuda(r)) => self.comms[i]
                .all_gather(s, r)
                .map(|_| ())
                .map_err(|e| nccl_error("ncclAllGather", e)),
            _ => Err(Error::Unsupported("a host buffer in an NCCL call".into())),
        })?;
        if self.comms.len() > 1 {
            for ((s, r), comm) in send.iter().zip(recv.iter_mut()).zip(&self.comms) {
                let stream = comm.stream();
                if let Buf::Cuda(v) = s {
                    let _ = v.device_ptr(&stream);
                }
                touch(r, &stream);
            }
        }
        Ok(())
    }
}
