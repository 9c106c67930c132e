//! [`Collective`]: the two operations sharded normalization needs from a communication
//! backend, over the ranks of one named axis and its `axis_index_groups`.
//!
//! A collective is bound to one axis (a name and its groups) when it is built, because
//! real communicators are: NCCL creates one communicator per group up front, and that
//! is collective and blocking, so it cannot happen lazily inside a forward pass. A handle
//! drives one or more *local* ranks (one per process with NCCL across processes, all of
//! them in process); each call takes one buffer per local rank, in
//! [`Collective::local_ranks`] order, and only enqueues work: on a GPU the operation is
//! ordered on the rank's stream and the call returns without waiting for it.

use cudarc::driver::{CudaView, CudaViewMut};

use super::AxisGroups;
use crate::{Device, Error, Result};

/// One rank's data that a collective reads: on the host (the CPU backend, in f64 like the
/// reference it runs) or on a GPU (f32).
#[derive(Debug)]
pub enum Buf<'a> {
    Host(&'a [f64]),
    Cuda(CudaView<'a, f32>),
}

/// One rank's data that a collective writes.
#[derive(Debug)]
pub enum BufMut<'a> {
    Host(&'a mut [f64]),
    Cuda(CudaViewMut<'a, f32>),
}

impl Buf<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Buf::Host(v) => v.len(),
            Buf::Cuda(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BufMut<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            BufMut::Host(v) => v.len(),
            BufMut::Cuda(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// All-reduce and all-gather within the groups of one named axis.
///
/// Semantics (every backend): the ranks of a group are ordered by their position in the
/// group (`AxisGroups::position`), and
/// * [`all_reduce_sum`](Collective::all_reduce_sum): afterwards every buffer holds the
///   element-wise sum of its group's buffers (JAX's `psum`). The in-process backends add
///   in position order, so their results are bitwise reproducible; NCCL picks its own
///   order.
/// * [`all_gather`](Collective::all_gather): `recv` of every rank holds the group's `send`
///   buffers concatenated in position order, so it is `group_size` times as long.
///
/// Buffers of one call have equal lengths across the world (as in `pmap`). A call that
/// returns an error for bad arguments has enqueued nothing.
///
/// Collectives are `Send + Sync` so that a layer over one ([`crate::ShardedLayerNorm`])
/// can be owned by, or shared between, threads (one thread per GPU); an implementation
/// serialises its calls internally where its backend needs that.
pub trait Collective: Send + Sync {
    /// The axis, its groups and the local ranks this handle was built for.
    fn membership(&self) -> &Membership;

    /// The axis the ranks are mapped over (flax's and JAX's `axis_name`).
    fn axis_name(&self) -> &str {
        self.membership().axis_name()
    }

    /// The groups that reduce independently (JAX's `axis_index_groups`), over the world.
    fn groups(&self) -> &AxisGroups {
        self.membership().groups()
    }

    /// The world ranks whose buffers this handle takes, in the order its calls take them.
    fn local_ranks(&self) -> &[usize] {
        self.membership().ranks()
    }

    /// Where each local rank's buffers live; on a GPU, its backend's stream is the one the
    /// collective is ordered on (launch the kernels that produce and consume the buffers on
    /// it, and nothing needs to wait on the host).
    fn devices(&self) -> &[Device] {
        self.membership().devices()
    }

    /// Sums each buffer over its rank's group, in place.
    fn all_reduce_sum(&self, bufs: &mut [BufMut<'_>]) -> Result<()>;

    /// Gathers each group's `send` buffers, in position order, into every member's `recv`.
    fn all_gather(&self, send: &[Buf<'_>], recv: &mut [BufMut<'_>]) -> Result<()>;
}

/// Who takes part in a collective: the axis (its name and groups) and the world ranks one
/// handle drives, each with the device its buffers live on.
#[derive(Clone, Debug)]
pub struct Membership {
    axis_name: String,
    groups: AxisGroups,
    ranks: Vec<usize>,
    devices: Vec<Device>,
}

impl Membership {
    /// `ranks[i]` runs on `devices[i]`. Errors for an empty axis name, a rank outside the
    /// world or listed twice, or lists of different lengths.
    pub fn new(
        axis_name: impl Into<String>,
        groups: AxisGroups,
        ranks: Vec<usize>,
        devices: Vec<Device>,
    ) -> Result<Membership> {
        let axis_name = axis_name.into();
        if axis_name.is_empty() {
            return Err(Error::InvalidConfig("axis_name must not be empty".into()));
        }
        if ranks.len() != devices.len() {
            return Err(Error::InvalidConfig(format!(
                "{} local rank(s) but {} device(s)",
                ranks.len(),
                devices.len()
            )));
        }
        if let Some(&r) = ranks.iter().find(|&&r| r >= groups.world()) {
            return Err(Error::InvalidConfig(format!(
                "rank {r} is outside the world 0..{}",
                groups.world()
            )));
        }
        if let Some((i, r)) = ranks
            .iter()
            .enumerate()
            .find(|&(i, r)| ranks[..i].contains(r))
        {
            return Err(Error::InvalidConfig(format!(
                "rank {r} is listed twice (local ranks {} and {i})",
                ranks.iter().position(|q| q == r).unwrap_or(0)
            )));
        }
        Ok(Membership {
            axis_name,
            groups,
            ranks,
            devices,
        })
    }

    /// Every rank of the world, in rank order, rank r on `devices[r]`.
    pub fn whole_world(
        axis_name: impl Into<String>,
        groups: AxisGroups,
        devices: Vec<Device>,
    ) -> Result<Membership> {
        let ranks = (0..groups.world()).collect();
        Membership::new(axis_name, groups, ranks, devices)
    }

    pub fn axis_name(&self) -> &str {
        &self.axis_name
    }
    pub fn groups(&self) -> &AxisGroups {
        &self.groups
    }
    /// The world ranks of this handle, in the order its calls take their buffers.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }
    /// `devices()[i]` holds the buffers of `ranks()[i]`.
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }
}

/// Errors unless a call brings exactly one buffer per local rank.
pub(crate) fn check_count(
    c: &(impl Collective + ?Sized),
    what: &'static str,
    n: usize,
) -> Result<()> {
    let local = c.local_ranks().len();
    if n != local {
        return Err(Error::Shape {
            what,
            expected: format!("one buffer per local rank ({local})"),
            got: format!("{n} buffers"),
        });
    }
    Ok(())
}

/// Errors unless an all-gather's buffers have one length `n` for `send` and `k * n` for
/// `recv` (`k`: the group size); returns `n`. NCCL writes `k * n` elements into recv
/// whatever its length: this check is what keeps it inside the buffer.
pub(crate) fn check_gather_lens(
    k: usize,
    send: impl IntoIterator<Item = usize>,
    recv: impl IntoIterator<Item = usize>,
) -> Result<usize> {
    let n = check_equal_lens("all_gather send buffer", send, None)?;
    check_equal_lens("all_gather recv buffer", recv, Some(k * n))?;
    Ok(n)
}

/// Errors unless every length is `len` (the first one when `None`); returns it.
pub(crate) fn check_equal_lens(
    what: &'static str,
    lens: impl IntoIterator<Item = usize>,
    len: Option<usize>,
) -> Result<usize> {
    let mut want = len;
    for (i, got) in lens.into_iter().enumerate() {
        match want {
            None => want = Some(got),
            Some(w) if w != got => {
                return Err(Error::Shape {
                    what,
                    expected: format!("{w} elements in every rank's buffer"),
                    got: format!("{got} elements in buffer {i}"),
                })
            }
            Some(_) => {}
        }
    }
    Ok(want.unwrap_or(0))
}

/// Errors unless `axis_name` is the axis the collective was built for (JAX raises
/// "unbound axis name" for a name no enclosing `pmap` binds).
pub(crate) fn check_axis(c: &(impl Collective + ?Sized), axis_name: &str) -> Result<()> {
    if axis_name != c.axis_name() {
        return Err(Error::InvalidConfig(format!(
            "unbound axis name `{axis_name}`: this collective reduces over `{}`",
            c.axis_name()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(n: usize) -> AxisGroups {
        AxisGroups::new(n, None).unwrap()
    }

    #[test]
    fn membership_rejects_what_no_collective_could_serve() {
        let cpu = |n| vec![Device::Cpu; n];
        let err = |m: Result<Membership>| m.unwrap_err().to_string();
        assert!(err(Membership::whole_world("", world(2), cpu(2))).contains("axis_name"));
        assert!(err(Membership::whole_world("i", world(2), cpu(3)))
            .contains("2 local rank(s) but 3 device(s)"));
        assert!(err(Membership::new("i", world(2), vec![2], cpu(1))).contains("outside the world"));
        assert!(err(Membership::new("i", world(4), vec![1, 3, 1], cpu(3)))
            .contains("rank 1 is listed twice"));
        let m = Membership::new("i", world(4), vec![3, 1], cpu(2)).unwrap();
        assert_eq!(
            (m.axis_name(), m.ranks(), m.groups().world()),
            ("i", &[3, 1][..], 4)
        );
    }
}
