//! A three-stage pipeline on threads joined by bounded channels, with buffer recycling:
//! `produce` (read the disk) -> `transform` (compress, checksum, encrypt) -> `consume`
//! (write to tape, on the calling thread). Items stay in order; memory is bounded by
//! `depth` items per stage whatever the amount of data; buffers are reused, so the
//! steady state allocates nothing. The first error from any stage stops all of them and
//! is returned.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// How long each stage spent working (not waiting for the others), and the whole run.
/// The stage whose busy time is closest to `wall` is what limits the throughput: the
/// disk read, the compress/encrypt step or the drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct StageTimes {
    pub produce_s: f64,
    pub transform_s: f64,
    pub consume_s: f64,
    pub wall_s: f64,
}

fn timed<R>(busy: &mut Duration, f: impl FnOnce() -> R) -> R {
    let t = Instant::now();
    let r = f();
    *busy += t.elapsed();
    r
}

/// Default queue depth between stages: enough to keep a drive streaming while the next
/// records are prepared, small enough to bound memory (depth x record size x 4).
pub const DEFAULT_DEPTH: usize = 4;

/// Run the pipeline. `produce` fills a recycled item and returns `Ok(false)` when there
/// is nothing more; `transform` turns a produced item into an output item (it may take
/// buffers from the produced item, e.g. swap them, as both kinds are recycled); `consume`
/// takes each output item in order. Returns how long each stage was busy.
pub fn run<C, S, E, P, T, K>(
    depth: usize,
    produce: P,
    transform: T,
    consume: K,
) -> Result<StageTimes, E>
where
    C: Default + Send,
    S: Default + Send,
    E: Send,
    P: FnMut(&mut C) -> Result<bool, E> + Send,
    T: FnMut(&mut C, &mut S) -> Result<(), E> + Send,
    K: FnMut(&mut S) -> Result<(), E>,
{
    run_workers(depth, produce, vec![transform], consume)
}

/// As [`run`] with the transform stage on `transforms.len()` threads: item `i` goes to
/// `transforms[i % n]`, and `consume` still takes the items in production order. Each
/// transform keeps its own state (a compressor, say); it learns which items are its own
/// from that rule. `transform_s` is the sum over the workers.
pub fn run_workers<C, S, E, P, T, K>(
    depth: usize,
    produce: P,
    transforms: Vec<T>,
    consume: K,
) -> Result<StageTimes, E>
where
    C: Default + Send,
    S: Default + Send,
    E: Send,
    P: FnMut(&mut C) -> Result<bool, E> + Send,
    T: FnMut(&mut C, &mut S) -> Result<(), E> + Send,
    K: FnMut(&mut S) -> Result<(), E>,
{
    run_spooled(depth, 0, produce, transforms, consume)
}

/// The spool between the transform stage and `consume`: transformed items wait in it
/// (in production order) and are handed on in bursts.
struct Spool<S> {
    /// A memory spool's items.
    items: std::collections::VecDeque<(usize, S)>,
    /// A file spool's logical positions: the next byte written, the next byte read.
    head: u64,
    tail: u64,
    /// Encoded records the file spool could not take (its file failed to be written):
    /// after the file's, in order, a few at a time.
    spilled: std::collections::VecDeque<Vec<u8>>,
    /// A burst is under way: `consume` takes items until the spool is empty.
    bursting: bool,
    /// A file spool's decisions (stream, accumulate, burst).
    pacer: Option<crate::spool::Pacer>,
    /// The transform stage has ended (no more items will come).
    ended: bool,
    /// `consume` failed: the merge stops taking items.
    stopped: bool,
}

/// How a file spool turns items into bytes and back, and its failures into `E`.
pub trait Codec<S, E>: Sync {
    /// Append what `consume` needs of `item` to `out`.
    fn encode(&self, item: &S, out: &mut Vec<u8>);
    /// Rebuild an item from what [`Codec::encode`] wrote, in a recycled `item`.
    fn decode(&self, bytes: &[u8], item: &mut S) -> Result<(), E>;
    /// The bytes `item` puts on tape (the source's rate is measured in them).
    fn size(&self, item: &S) -> u64;
    fn spool_error(&self, e: crate::spool::SpoolError) -> E;
    /// The spool file could not be written (`e`): the records go on to `consume`
    /// through memory, a few at a time, without bursts, for the rest of the run.
    fn spool_failed(&self, e: &crate::spool::SpoolError);
}

/// Records held in memory, at most, once a spool file failed.
const SPILLED_MAX: usize = 8;

/// Where transformed items wait before `consume` takes them.
pub enum Buffer<'a, S, E> {
    /// Nowhere: `consume` takes each item as it comes.
    None,
    /// Up to this many items in memory (0 or 1: none).
    Memory(usize),
    /// A spool file, paced by `pace` ([`crate::spool::Pacer`]): while it streams,
    /// items go to `consume` as they come through memory
    /// ([`crate::spool::STREAM_RECORDS`] at most, after what the file still holds);
    /// otherwise they are encoded into the file as they come and read back in bursts.
    /// A burst starts when the pacer says so, when an item does not fit, or at the end
    /// of the input. Memory: [`crate::spool::STREAM_RECORDS`] items more than without
    /// a spool.
    File {
        file: &'a crate::spool::SpoolFile,
        pace: crate::spool::Pacer,
        codec: &'a dyn Codec<S, E>,
    },
}

/// As [`run_workers`] with a spool of up to `spool_items` transformed items between the
/// transform stage and `consume`: `consume` gets nothing until the spool is half full
/// (or the input ends), then every item, as fast as it takes them, until the spool is
/// empty again, while the producer and the transforms go on filling it (the other half
/// takes in what they deliver while `consume` is held up). A consumer faster than the producer (a tape drive fed by a slow source) so works
/// in bursts of at least `spool_items` items instead of starving item by item. Memory:
/// `spool_items` more output items. 0 or 1 is [`run_workers`]'s behaviour.
pub fn run_spooled<C, S, E, P, T, K>(
    depth: usize,
    spool_items: usize,
    produce: P,
    transforms: Vec<T>,
    consume: K,
) -> Result<StageTimes, E>
where
    C: Default + Send,
    S: Default + Send,
    E: Send,
    P: FnMut(&mut C) -> Result<bool, E> + Send,
    T: FnMut(&mut C, &mut S) -> Result<(), E> + Send,
    K: FnMut(&mut S) -> Result<(), E>,
{
    let buffer = if spool_items <= 1 {
        Buffer::None
    } else {
        Buffer::Memory(spool_items)
    };
    run_buffered(
        depth,
        buffer,
        produce,
        transforms,
        |_: &mut S| Ok(()),
        consume,
    )
}

/// As [`run_workers`] with `buffer` between the transform stage and `consume` (see
/// [`Buffer`]), and `stage` run on each item in production order before it enters the
/// buffer (by the workers when there is a buffer, see [`Merge`]; else on `consume`'s
/// thread): what must follow the production order but need not wait for `consume` (a
/// digest over the items).
pub fn run_buffered<C, S, E, P, T, G, K>(
    depth: usize,
    buffer: Buffer<'_, S, E>,
    mut produce: P,
    transforms: Vec<T>,
    stage: G,
    mut consume: K,
) -> Result<StageTimes, E>
where
    C: Default + Send,
    S: Default + Send,
    E: Send,
    P: FnMut(&mut C) -> Result<bool, E> + Send,
    T: FnMut(&mut C, &mut S) -> Result<(), E> + Send,
    G: FnMut(&mut S) -> Result<(), E> + Send,
    K: FnMut(&mut S) -> Result<(), E>,
{
    let depth = depth.max(1);
    assert!(!transforms.is_empty(), "a pipeline needs a transform");
    let buffer = match buffer {
        Buffer::Memory(n) if n <= 1 => Buffer::None,
        b => b,
    };
    let spool_items = match buffer {
        Buffer::Memory(n) => n,
        Buffer::File { .. } => crate::spool::STREAM_RECORDS,
        Buffer::None => 0,
    };
    let n = transforms.len();
    let started = Instant::now();
    // Produced items are recycled through one queue; each worker has its input queue,
    // its output queue (without a buffer) and its own recycling queue for output items.
    let c_limit = n * (depth + 1) + 2;
    // Output items each worker may have in flight: its queues', and its share of the
    // spool's (each comes back through its recycling queue, which holds them all).
    let s_limit = depth + 2 + spool_items.div_ceil(n);
    let (ret_c_tx, ret_c_rx): (SyncSender<C>, Receiver<C>) = sync_channel(c_limit);
    let mut to_workers = Vec::with_capacity(n);
    let mut from_workers = Vec::with_capacity(n);
    let mut returns = Vec::with_capacity(n);
    let mut worker_ends = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx_c, rx_c): (SyncSender<C>, Receiver<C>) = sync_channel(depth);
        let (tx_s, rx_s): (SyncSender<S>, Receiver<S>) = sync_channel(depth);
        let (ret_s_tx, ret_s_rx): (SyncSender<S>, Receiver<S>) = sync_channel(s_limit);
        to_workers.push(tx_c);
        from_workers.push(rx_s);
        returns.push(ret_s_tx);
        worker_ends.push((rx_c, tx_s, ret_s_rx));
    }
    let shared = (
        std::sync::Mutex::new(Spool {
            items: std::collections::VecDeque::with_capacity(spool_items),
            head: 0,
            tail: 0,
            spilled: std::collections::VecDeque::new(),
            bursting: false,
            pacer: None,
            ended: false,
            stopped: false,
        }),
        std::sync::Condvar::new(),
    );
    // With a buffer the workers put the items into it in production order themselves
    // (no thread of its own, no hand-over more per item): each parks its item, and the
    // worker holding the merge lock takes the parked items that are next, runs `stage`
    // on each and routes it into the buffer. A worker never waits for another's item.
    // Without one, `consume`'s thread runs `stage`.
    let (mut direct_stage, merge, spool_file) = match buffer {
        Buffer::None => (Some(stage), None, None),
        Buffer::Memory(items) => (
            None,
            Some(Merge::new(
                stage,
                Router::Memory {
                    burst_at: items.div_ceil(2),
                },
                n,
            )),
            None,
        ),
        Buffer::File { file, pace, codec } => {
            shared.0.lock().unwrap_or_else(|p| p.into_inner()).pacer = Some(pace);
            (
                None,
                Some(Merge::new(
                    stage,
                    Router::File {
                        file,
                        codec,
                        bytes: Vec::new(),
                        failed: false,
                        started,
                        returns: returns.clone(),
                    },
                    n,
                )),
                Some((file, codec)),
            )
        }
    };
    let merge = merge.map(std::sync::Mutex::new);

    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<Duration, E> {
            let mut busy = Duration::ZERO;
            let mut made = 0usize;
            let mut next = 0usize;
            loop {
                let mut item = match ret_c_rx.try_recv() {
                    Ok(c) => c,
                    Err(_) if made < c_limit => {
                        made += 1;
                        C::default()
                    }
                    Err(_) => match ret_c_rx.recv() {
                        Ok(c) => c,
                        Err(_) => return Ok(busy), // downstream stopped
                    },
                };
                if !timed(&mut busy, || produce(&mut item))? {
                    return Ok(busy);
                }
                if to_workers[next % n].send(item).is_err() {
                    return Ok(busy); // downstream stopped; its error is reported
                }
                next += 1;
            }
        });
        let merge = merge.as_ref();
        let shared = &shared;
        let workers: Vec<_> = transforms
            .into_iter()
            .zip(worker_ends)
            .enumerate()
            .map(|(w, (mut transform, (rx_c, tx_s, ret_s_rx)))| {
                let ret_c_tx = ret_c_tx.clone();
                scope.spawn(move || -> Result<Duration, E> {
                    let mut busy = Duration::ZERO;
                    let mut made = 0usize;
                    let mut outcome = Ok(());
                    // Item k of this worker is item w + k * n of the production.
                    for (k, mut item) in rx_c.iter().enumerate() {
                        let mut out = match ret_s_rx.try_recv() {
                            Ok(s) => s,
                            Err(_) if made < s_limit => {
                                made += 1;
                                S::default()
                            }
                            Err(_) => match ret_s_rx.recv() {
                                Ok(s) => s,
                                Err(_) => break, // downstream stopped
                            },
                        };
                        if let Err(e) = timed(&mut busy, || transform(&mut item, &mut out)) {
                            outcome = Err(e);
                            break;
                        }
                        let _ = ret_c_tx.try_send(item);
                        let going_on = match merge {
                            None => tx_s.send(out).is_ok(),
                            Some(m) => m.lock().unwrap_or_else(|p| p.into_inner()).take(
                                w + k * n,
                                out,
                                shared,
                            ),
                        };
                        if !going_on {
                            break; // downstream stopped; its error is reported
                        }
                    }
                    if let Some(m) = merge {
                        m.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .worker_ended(outcome.is_err(), shared);
                    }
                    outcome.map(|()| busy)
                })
            })
            .collect();
        drop(ret_c_tx);
        let mut result = Ok(());
        let mut consume_busy = Duration::ZERO;
        let (spool, cv) = (&shared.0, &shared.1);
        match (direct_stage.as_mut(), spool_file) {
            (Some(stage), _) => {
                let mut next = 0usize;
                // In production order: item i comes from worker i % n. A worker that
                // ended (input exhausted, or an error) ends the run here; its error is
                // reported below.
                while let Ok(mut out) = from_workers[next % n].recv() {
                    if let Err(e) = stage(&mut out) {
                        result = Err(e);
                        break;
                    }
                    if let Err(e) = timed(&mut consume_busy, || consume(&mut out)) {
                        result = Err(e);
                        break;
                    }
                    let _ = returns[next % n].try_send(out);
                    next += 1;
                }
            }
            (None, None) => {
                // Items are taken in bursts: a burst starts at half the spool, so the
                // other half takes in what the source delivers while the consumer waits
                // (a tape drive repositioning before it writes again) instead of
                // stalling the source.
                loop {
                    let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
                    while !(g.ended || (g.bursting && !g.items.is_empty())) {
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    let Some((i, mut out)) = g.items.pop_front() else {
                        break; // ended and empty
                    };
                    if g.items.is_empty() {
                        g.bursting = false;
                    }
                    drop(g);
                    if let Err(e) = timed(&mut consume_busy, || consume(&mut out)) {
                        result = Err(e);
                        stop(shared);
                        break;
                    }
                    let _ = returns[i % n].try_send(out);
                }
            }
            (None, Some((file, codec))) => {
                let mut out = S::default();
                let mut bytes = Vec::new();
                let now = || started.elapsed().as_secs_f64();
                // Read ahead of the burst: the next PREFETCH bytes are asked into the
                // page cache each time the reader passed half of them.
                const PREFETCH: u64 = 64 << 20;
                let mut prefetched_to = 0u64;
                let holds =
                    |g: &Spool<S>| g.head > g.tail || !g.spilled.is_empty() || !g.items.is_empty();
                let takes =
                    |g: &Spool<S>| g.bursting || g.pacer.as_ref().is_some_and(|p| p.streaming());
                loop {
                    let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
                    while !(g.ended || g.stopped || (takes(&g) && holds(&g))) {
                        g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                    }
                    if g.stopped || !holds(&g) {
                        break; // ended and empty, or the merge failed
                    }
                    // The items in memory are older than the file's records (the merge
                    // streams through memory only while the file is empty); the file's
                    // records come before those held in memory after it failed.
                    if let Some((i, mut item)) = g.items.pop_front() {
                        drop(g);
                        cv.notify_all();
                        if let Err(e) = timed(&mut consume_busy, || consume(&mut item)) {
                            result = Err(e);
                            stop(shared);
                            break;
                        }
                        let _ = returns[i % n].try_send(item);
                        let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
                        if !holds(&g) && g.bursting {
                            g.bursting = false;
                            let t = now();
                            if let Some(p) = g.pacer.as_mut() {
                                p.burst_done(t);
                            }
                        }
                        drop(g);
                        cv.notify_all();
                        continue;
                    }
                    let at = g.tail;
                    let held = g.head;
                    let spilled = if g.head > g.tail {
                        None
                    } else {
                        g.spilled.pop_front()
                    };
                    drop(g);
                    if spilled.is_none() && prefetched_to < at + PREFETCH / 2 {
                        let to = held.min(at + PREFETCH);
                        if to > prefetched_to.max(at) {
                            let from = prefetched_to.max(at);
                            file.prefetch(from, to - from);
                            prefetched_to = to;
                        }
                    }
                    let step = (|| -> Result<u64, E> {
                        let len = match &spilled {
                            Some(rec) => {
                                codec.decode(&rec[4..], &mut out)?;
                                0
                            }
                            None => {
                                let mut len = [0u8; 4];
                                file.read_at(at, &mut len)
                                    .map_err(|e| codec.spool_error(e))?;
                                let len = u32::from_le_bytes(len) as usize;
                                bytes.resize(len, 0);
                                file.read_at(at + 4, &mut bytes)
                                    .map_err(|e| codec.spool_error(e))?;
                                codec.decode(&bytes, &mut out)?;
                                4 + len as u64
                            }
                        };
                        timed(&mut consume_busy, || consume(&mut out))?;
                        Ok(len)
                    })();
                    let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
                    match step {
                        Ok(len) => {
                            g.tail = at + len;
                            if !holds(&g) && g.bursting {
                                g.bursting = false;
                                let t = now();
                                if let Some(p) = g.pacer.as_mut() {
                                    p.burst_done(t);
                                }
                            }
                            drop(g);
                            cv.notify_all();
                        }
                        Err(e) => {
                            result = Err(e);
                            drop(g);
                            stop(shared);
                            break;
                        }
                    }
                }
            }
        }
        // Dropping the receivers and the recycling queues (the merge's too: a consumer
        // that failed leaves the items to nobody) unblocks the workers.
        if let Some(m) = merge {
            let mut m = m.lock().unwrap_or_else(|p| p.into_inner());
            m.done = true;
            if let Router::File { returns, .. } = &mut m.router {
                returns.clear();
            }
        }
        drop(from_workers);
        drop(returns);
        let mut transform_busy = Duration::ZERO;
        let mut worker_err = None;
        for w in workers {
            match w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)) {
                Ok(b) => transform_busy += b,
                Err(e) => {
                    if worker_err.is_none() {
                        worker_err = Some(e);
                    }
                }
            }
        }
        let p = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        if let Some((file, codec)) = spool_file {
            if let Err(e) = file.clear() {
                if result.is_ok() {
                    result = Err(codec.spool_error(e));
                }
            }
        }
        result?;
        if let Some(e) =
            merge.and_then(|m| m.lock().unwrap_or_else(|p| p.into_inner()).error.take())
        {
            return Err(e);
        }
        if let Some(e) = worker_err {
            return Err(e);
        }
        Ok(StageTimes {
            transform_s: transform_busy.as_secs_f64(),
            produce_s: p?.as_secs_f64(),
            consume_s: consume_busy.as_secs_f64(),
            wall_s: started.elapsed().as_secs_f64(),
        })
    })
}

/// The spool's state and the condition variable its users wait on.
type Shared<S> = (std::sync::Mutex<Spool<S>>, std::sync::Condvar);

/// Transformed items on their way into a buffer, in production order (see
/// [`run_buffered`]): held under a lock by the worker that merges.
struct Merge<'a, S, E, G> {
    stage: G,
    router: Router<'a, S, E>,
    /// The next item to go into the buffer.
    next: usize,
    /// Items that came before their turn: `parked[k]` is item `next + k`.
    parked: std::collections::VecDeque<Option<S>>,
    /// Workers still running.
    live: usize,
    /// No more items go in: the consumer stopped, a stage failed, or the input ended.
    done: bool,
    /// The first error of `stage` or of the spool.
    error: Option<E>,
}

/// Where [`Merge`] puts an item.
enum Router<'a, S, E> {
    /// The memory spool.
    Memory { burst_at: usize },
    /// The file spool: through memory while the pacer streams, else encoded into the
    /// file (or held in memory once the file failed).
    File {
        file: &'a crate::spool::SpoolFile,
        codec: &'a dyn Codec<S, E>,
        bytes: Vec<u8>,
        failed: bool,
        started: Instant,
        /// The workers' recycling queues: an encoded item goes back at once.
        returns: Vec<SyncSender<S>>,
    },
}

impl<'a, S, E, G: FnMut(&mut S) -> Result<(), E>> Merge<'a, S, E, G> {
    fn new(stage: G, router: Router<'a, S, E>, workers: usize) -> Self {
        Merge {
            stage,
            router,
            next: 0,
            parked: std::collections::VecDeque::new(),
            live: workers,
            done: false,
            error: None,
        }
    }

    /// Item `seq` is transformed: park it, then put every item whose turn has come
    /// into the buffer, `stage` first. False when no more items are wanted.
    fn take(&mut self, seq: usize, out: S, shared: &Shared<S>) -> bool {
        if self.done {
            return false;
        }
        let k = seq - self.next;
        if self.parked.len() <= k {
            self.parked.resize_with(k + 1, || None);
        }
        self.parked[k] = Some(out);
        while self.parked.front().is_some_and(Option::is_some) {
            let mut out = self.parked.pop_front().flatten().expect("checked above");
            let seq = self.next;
            self.next += 1;
            let routed = (self.stage)(&mut out).and_then(|()| self.router.route(seq, out, shared));
            match routed {
                Ok(true) => {}
                // The consumer stopped; its error is reported.
                Ok(false) => {
                    self.done = true;
                    return false;
                }
                Err(e) => {
                    self.error = Some(e);
                    self.done = true;
                    end_input(shared, true);
                    return false;
                }
            }
        }
        true
    }

    /// A worker ended (`failed`: its transform failed, and the consumer stops without
    /// draining the spool). The last one ends the input.
    fn worker_ended(&mut self, failed: bool, shared: &Shared<S>) {
        self.live -= 1;
        if self.done {
            return;
        }
        if failed || self.live == 0 {
            self.done = true;
            end_input(shared, failed);
        }
    }
}

impl<S, E> Router<'_, S, E> {
    /// Puts item `seq` into the buffer. `Ok(false)`: the consumer stopped.
    fn route(&mut self, seq: usize, out: S, shared: &Shared<S>) -> Result<bool, E> {
        let (spool, cv) = (&shared.0, &shared.1);
        let (file, codec, bytes, failed, started, returns) = match self {
            Router::Memory { burst_at } => {
                let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
                if g.stopped {
                    return Ok(false);
                }
                g.items.push_back((seq, out));
                if g.items.len() >= *burst_at {
                    g.bursting = true;
                }
                drop(g);
                cv.notify_all();
                return Ok(true);
            }
            Router::File {
                file,
                codec,
                bytes,
                failed,
                started,
                returns,
            } => (*file, *codec, bytes, failed, *started, returns),
        };
        let cap = file.capacity();
        let now = || started.elapsed().as_secs_f64();
        if !*failed {
            let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
            if g.pacer.as_ref().is_some_and(|p| p.streaming()) {
                // Only the merge changes the pacer out of streaming.
                while !g.stopped
                    && (g.head > g.tail || g.items.len() >= crate::spool::STREAM_RECORDS)
                {
                    cv.notify_all();
                    g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
                }
                if g.stopped {
                    return Ok(false);
                }
                let size = codec.size(&out);
                g.items.push_back((seq, out));
                let t = now();
                let pacer = g.pacer.as_mut().expect("a file spool's pacer");
                if pacer.arrived(t, size, 0) {
                    g.bursting = true;
                }
                drop(g);
                cv.notify_all();
                return Ok(true);
            }
        }
        let size = codec.size(&out);
        bytes.clear();
        bytes.extend_from_slice(&[0; 4]);
        codec.encode(&out, bytes);
        if let Some(r) = returns.get(seq % returns.len().max(1)) {
            let _ = r.try_send(out);
        }
        let len = bytes.len() as u64;
        if len > cap || len - 4 > u64::from(u32::MAX) {
            return Err(codec.spool_error(crate::spool::SpoolError {
                what: format!(
                    "a record of {len} bytes does not fit in a spool of {cap} bytes (give a larger --spool)"
                ),
            }));
        }
        bytes[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
        if !*failed {
            let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
            // No room: the drive must take what the spool holds now.
            while !g.stopped && cap - (g.head - g.tail) < len {
                g.bursting = true;
                cv.notify_all();
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.stopped {
                return Ok(false);
            }
            let at = g.head;
            drop(g);
            match file.write_at(at, bytes) {
                Ok(()) => {}
                // The file system is full, or failing: the run goes on without the
                // file (what it holds is still read back).
                Err(e) => {
                    *failed = true;
                    codec.spool_failed(&e);
                }
            }
        }
        let mut g = spool.lock().unwrap_or_else(|p| p.into_inner());
        if *failed {
            while !g.stopped && g.spilled.len() >= SPILLED_MAX {
                g.bursting = true;
                cv.notify_all();
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            if g.stopped {
                return Ok(false);
            }
            g.spilled.push_back(std::mem::take(bytes));
            g.bursting = true;
            drop(g);
            cv.notify_all();
            return Ok(true);
        }
        g.head += len;
        let held = g.head - g.tail;
        let t = now();
        if g.pacer
            .as_mut()
            .expect("a file spool's pacer")
            .arrived(t, size, held)
        {
            g.bursting = true;
        }
        drop(g);
        cv.notify_all();
        Ok(true)
    }
}

/// `consume` failed: the merge stops taking items and drops what the spool holds.
fn stop<S>(shared: &Shared<S>) {
    let mut g = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    g.stopped = true;
    g.items.clear();
    drop(g);
    shared.1.notify_all();
}

/// The input ended (`failed`: a stage failed, and the consumer stops without draining
/// the spool).
fn end_input<S>(shared: &Shared<S>, failed: bool) {
    let mut g = shared.0.lock().unwrap_or_else(|p| p.into_inner());
    g.ended = true;
    if failed {
        g.stopped = true;
        g.items.clear();
    }
    drop(g);
    shared.1.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stage that passes its item on unchanged.
    fn copy(c: &mut u32, s: &mut u32) -> Result<(), String> {
        *s = *c;
        Ok(())
    }

    /// An endless source of 1, 2, 3...; when `failing` is 0 it fails at 50.
    fn counting_source(failing: usize) -> impl FnMut(&mut u32) -> Result<bool, String> {
        let mut n = 0u32;
        move |c| {
            n += 1;
            *c = n;
            if failing == 0 && n == 50 {
                return Err("read failed".into());
            }
            Ok(true) // endless unless something stops it
        }
    }

    /// A source of 0..total, one item every `pause_us` microseconds at least, counting
    /// what it produced in `produced`.
    fn slow_source(
        produced: &std::sync::atomic::AtomicU32,
        total: u32,
        pause_us: u64,
    ) -> impl FnMut(&mut u32) -> Result<bool, String> + '_ {
        use std::sync::atomic::Ordering;
        move |c| {
            let k = produced.load(Ordering::SeqCst);
            if k == total {
                return Ok(false);
            }
            std::thread::sleep(std::time::Duration::from_micros(pause_us));
            *c = k;
            produced.store(k + 1, Ordering::SeqCst);
            Ok(true)
        }
    }

    /// The copying transform; when `failing` is 1 it fails at item 50.
    fn failing_transform(c: &mut u32, s: &mut u32, failing: usize) -> Result<(), String> {
        if failing == 1 && *c == 50 {
            return Err("compress failed".to_string());
        }
        copy(c, s)
    }

    #[test]
    fn items_arrive_in_order_and_transformed() {
        let mut next = 0u32;
        let mut seen = Vec::new();
        run::<Vec<u32>, Vec<u32>, String, _, _, _>(
            2,
            |c| {
                if next == 1000 {
                    return Ok(false);
                }
                c.clear();
                c.push(next);
                next += 1;
                Ok(true)
            },
            |c, s| {
                s.clear();
                s.extend(c.iter().map(|x| x * 2));
                Ok(())
            },
            |s| {
                seen.push(s[0]);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn several_workers_keep_production_order_and_take_items_round_robin() {
        for n in 1..=4usize {
            let mut next = 0u32;
            let mut seen = Vec::new();
            let workers: Vec<_> = (0..n)
                .map(|w| {
                    let mut mine = 0u32;
                    move |c: &mut Vec<u32>, s: &mut Vec<u32>| -> Result<(), String> {
                        // Uneven work, so the workers finish out of step.
                        if (c[0] as usize + w).is_multiple_of(3) {
                            std::thread::sleep(std::time::Duration::from_micros(300));
                        }
                        s.clear();
                        s.extend([c[0] * 2, w as u32, mine]);
                        mine += 1;
                        Ok(())
                    }
                })
                .collect();
            run_workers::<Vec<u32>, Vec<u32>, String, _, _, _>(
                2,
                |c| {
                    if next == 500 {
                        return Ok(false);
                    }
                    c.clear();
                    c.push(next);
                    next += 1;
                    Ok(true)
                },
                workers,
                |s| {
                    seen.push((s[0], s[1], s[2]));
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen.len(), 500, "{n} workers");
            for (i, &(v, w, k)) in seen.iter().enumerate() {
                assert_eq!(v, 2 * i as u32, "{n} workers: order");
                assert_eq!(w as usize, i % n, "{n} workers: item {i}'s worker");
                assert_eq!(
                    k as usize,
                    i / n,
                    "{n} workers: item {i} is its worker's {k}th"
                );
            }
        }
    }

    #[test]
    fn an_error_in_one_of_several_workers_stops_the_run_and_is_returned() {
        for failing in 0..3usize {
            let mut next = 0u32;
            let mut consumed = 0u32;
            let workers: Vec<_> = (0..3usize)
                .map(|w| {
                    move |c: &mut u32, s: &mut u32| -> Result<(), String> {
                        if w == failing && *c > 100 {
                            return Err(format!("worker {w} failed at {c}"));
                        }
                        *s = *c;
                        Ok(())
                    }
                })
                .collect();
            let r = run_workers::<u32, u32, String, _, _, _>(
                2,
                |c| {
                    next += 1;
                    *c = next;
                    Ok(next < 100_000)
                },
                workers,
                |_| {
                    consumed += 1;
                    Ok(())
                },
            );
            let e = r.unwrap_err();
            assert!(e.starts_with(&format!("worker {failing} failed")), "{e}");
            assert!(
                consumed < 1000,
                "the run stopped soon after the error: {consumed}"
            );
        }
    }

    #[test]
    fn stage_times_count_each_stage_s_work() {
        // Each item costs the transform at least 4 ms (a sleep: a lower bound whatever
        // else the machine does); the other stages do almost nothing.
        let mut n = 0u32;
        let t = run::<u32, u32, String, _, _, _>(
            2,
            |c| {
                n += 1;
                *c = n;
                Ok(n <= 25)
            },
            |c, s| {
                std::thread::sleep(std::time::Duration::from_millis(4));
                *s = *c;
                Ok(())
            },
            |_| Ok(()),
        )
        .unwrap();
        assert!(t.transform_s >= 0.1, "{t:?}");
        assert!(t.wall_s >= t.transform_s, "{t:?}");
    }

    #[test]
    fn an_error_in_any_stage_stops_the_pipeline_and_is_returned() {
        for failing in 0..3 {
            let r = run::<u32, u32, String, _, _, _>(
                2,
                counting_source(failing),
                |c, s| failing_transform(c, s, failing),
                |s| {
                    if failing == 2 && *s == 50 {
                        return Err("write failed".into());
                    }
                    Ok(())
                },
            );
            let want = ["read failed", "compress failed", "write failed"][failing];
            assert_eq!(r.unwrap_err(), want);
        }
    }

    #[test]
    fn a_spool_hands_items_on_in_bursts_in_order() {
        use std::sync::atomic::{AtomicU32, Ordering};
        for n in [1usize, 2] {
            let produced = AtomicU32::new(0);
            // (item, items produced when it was consumed)
            let mut seen = Vec::new();
            let workers = vec![copy; n];
            run_spooled::<u32, u32, String, _, _, _>(
                2,
                16,
                // A slow source: the consumer would take every item at once.
                slow_source(&produced, 100, 200),
                workers,
                |s| {
                    seen.push((*s, produced.load(Ordering::SeqCst)));
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(seen.len(), 100, "{n} workers");
            for (i, &(v, _)) in seen.iter().enumerate() {
                assert_eq!(v, i as u32, "{n} workers: order");
            }
            // Nothing is consumed before the spool was half full (8 of 16 items), and
            // each burst starts with at least 8 items spooled (or the input ended): an
            // item consumed first in a burst was produced at least 8 items before the
            // then newest one.
            assert!(
                seen[0].1 >= 8,
                "{n} workers: first item consumed early: {seen:?}"
            );
            let mut bursts = 0;
            for w in seen.windows(2) {
                // A new burst: the spool ran empty (the previous item was the newest).
                if w[0].1 == w[0].0 + 1 && w[1].0 == w[0].0 + 1 {
                    bursts += 1;
                    assert!(
                        w[1].1 >= w[1].0 + 8 || w[1].1 == 100,
                        "{n} workers: burst started at item {} with {} produced",
                        w[1].0,
                        w[1].1
                    );
                }
            }
            assert!(bursts >= 1, "{n} workers: {seen:?}");
        }
    }

    #[test]
    fn an_error_while_spooling_stops_the_pipeline_and_is_returned() {
        for failing in 0..3 {
            let r = run_spooled::<u32, u32, String, _, _, _>(
                2,
                8,
                counting_source(failing),
                vec![|c: &mut u32, s: &mut u32| failing_transform(c, s, failing)],
                |s| {
                    if failing == 2 && *s == 20 {
                        return Err("write failed".into());
                    }
                    Ok(())
                },
            );
            let want = ["read failed", "compress failed", "write failed"][failing];
            assert_eq!(r.unwrap_err(), want);
        }
    }

    /// A file spool for `u32` items: four bytes each, and a flag to make decoding fail.
    struct U32Codec {
        fail_decode_at: Option<u32>,
        failures: std::sync::Mutex<Vec<String>>,
    }

    impl U32Codec {
        fn new(fail_decode_at: Option<u32>) -> U32Codec {
            U32Codec {
                fail_decode_at,
                failures: Default::default(),
            }
        }
    }

    impl Codec<u32, String> for U32Codec {
        fn encode(&self, item: &u32, out: &mut Vec<u8>) {
            out.extend_from_slice(&item.to_le_bytes());
            // Records of uneven length, so the ring wraps mid-record.
            out.extend(std::iter::repeat_n(0xa5, (*item % 7) as usize));
        }
        fn decode(&self, bytes: &[u8], item: &mut u32) -> Result<(), String> {
            *item = u32::from_le_bytes(bytes[..4].try_into().unwrap());
            if bytes.len() != 4 + (*item % 7) as usize {
                return Err(format!("item {item} came back {} bytes long", bytes.len()));
            }
            if Some(*item) == self.fail_decode_at {
                return Err("decode failed".into());
            }
            Ok(())
        }
        fn size(&self, item: &u32) -> u64 {
            4 + u64::from(*item % 7)
        }
        fn spool_error(&self, e: crate::spool::SpoolError) -> String {
            e.what
        }
        fn spool_failed(&self, e: &crate::spool::SpoolError) {
            self.failures.lock().unwrap().push(e.what.clone());
        }
    }

    /// The workers put the items into the spool themselves: when one is always late,
    /// the other puts the late one's items in too; each item still goes back to the
    /// worker that made it (a worker that lost its items to the other would wait for
    /// them forever), and everything arrives once, in order, through memory or file.
    #[test]
    fn a_late_worker_s_items_merged_by_the_other_come_back_to_it() {
        // A lost item would hang the run: fail instead.
        let (done, finished) = std::sync::mpsc::channel();
        let run = std::thread::spawn(move || {
            use std::sync::atomic::AtomicU32;
            let dir = tempfile::tempdir().unwrap();
            let file = crate::spool::SpoolFile::create(dir.path(), 4096).unwrap();
            let codec = U32Codec::new(None);
            // Items of worker 0 (the even ones) take longer than those of worker 1.
            let late_evens = |c: &mut u32, s: &mut u32| -> Result<(), String> {
                if (*c).is_multiple_of(2) {
                    std::thread::sleep(std::time::Duration::from_micros(300));
                }
                copy(c, s)
            };
            let buffers = [
                Buffer::File {
                    file: &file,
                    pace: crate::spool::Pacer::fixed(200),
                    codec: &codec,
                },
                Buffer::File {
                    file: &file,
                    pace: crate::spool::Pacer::new(crate::spool::DriveSpeeds::LTO_DEFAULT, 4096),
                    codec: &codec,
                },
                Buffer::Memory(8),
            ];
            for buffer in buffers {
                let produced = AtomicU32::new(0);
                let mut seen = Vec::new();
                run_buffered::<u32, u32, String, _, _, _, _>(
                    2,
                    buffer,
                    slow_source(&produced, 2000, 0),
                    vec![late_evens; 2],
                    |_| Ok(()),
                    |s| {
                        seen.push(*s);
                        Ok(())
                    },
                )
                .unwrap();
                assert_eq!(seen, (0..2000).collect::<Vec<_>>());
            }
            let _ = done.send(());
        });
        match finished.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(()) => run.join().unwrap(),
            // A panic in the run: its message.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::panic::resume_unwind(run.join().unwrap_err())
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("the run hangs: a worker waits for an item that never comes back")
            }
        }
    }

    #[test]
    fn a_file_spool_hands_items_on_in_bursts_in_order_and_stages_them_first() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let dir = tempfile::tempdir().unwrap();
        // 16 records of 4-10 bytes each (with their 4-byte length) fit; bursts from 100.
        let file = crate::spool::SpoolFile::create(dir.path(), 200).unwrap();
        let codec = U32Codec::new(None);
        for n in [1usize, 2] {
            let produced = AtomicU32::new(0);
            let mut staged = Vec::new();
            let mut seen = Vec::new();
            let workers = vec![copy; n];
            run_buffered::<u32, u32, String, _, _, _, _>(
                2,
                Buffer::File {
                    file: &file,
                    pace: crate::spool::Pacer::fixed(100),
                    codec: &codec,
                },
                slow_source(&produced, 300, 100),
                workers,
                |s| {
                    staged.push(*s);
                    *s += 1_000_000; // what the stage does reaches consume
                    Ok(())
                },
                |s| {
                    seen.push((*s - 1_000_000, produced.load(Ordering::SeqCst)));
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(
                staged,
                (0..300).collect::<Vec<_>>(),
                "{n} workers: stage order"
            );
            assert_eq!(seen.len(), 300, "{n} workers");
            for (i, &(v, _)) in seen.iter().enumerate() {
                assert_eq!(v, i as u32, "{n} workers: order");
            }
            // Nothing is consumed before 100 bytes (at least 7 records of at most 14
            // bytes) were spooled.
            assert!(
                seen[0].1 >= 7,
                "{n} workers: first item consumed early: {seen:?}"
            );
            // The file is emptied after the run.
            assert_eq!(file.allocated(), 0);
        }
    }

    #[test]
    fn a_paced_file_spool_streams_a_fast_source_through_memory_and_accumulates_a_slow_one() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let file = crate::spool::SpoolFile::create(dir.path(), 1 << 30).unwrap();
        let codec = U32Codec::new(None);
        // A drive whose lowest speed is 1 MB/s (a window of 1 MiB); the records are
        // counted as 64 KiB each (the source's rate is measured in what goes to tape).
        struct Big<'a>(&'a U32Codec);
        impl Codec<u32, String> for Big<'_> {
            fn encode(&self, item: &u32, out: &mut Vec<u8>) {
                self.0.encode(item, out)
            }
            fn decode(&self, bytes: &[u8], item: &mut u32) -> Result<(), String> {
                self.0.decode(bytes, item)
            }
            fn size(&self, _: &u32) -> u64 {
                64 << 10
            }
            fn spool_error(&self, e: crate::spool::SpoolError) -> String {
                e.what
            }
            fn spool_failed(&self, e: &crate::spool::SpoolError) {
                self.0.spool_failed(e)
            }
        }
        let big = Big(&codec);
        let speeds = crate::spool::DriveSpeeds {
            native: 4_000_000,
            min: 1_000_000,
            reposition_s: 1.0,
        };
        // Fast: 2000 items of 64 KiB as fast as the machine makes them (far above
        // 1 MB/s): after the first window (16 items) every item is consumed while the
        // producer is still producing, and in order.
        let produced = AtomicU32::new(0);
        let mut seen = Vec::new();
        let mut most_in_file = 0u64;
        run_buffered::<u32, u32, String, _, _, _, _>(
            2,
            Buffer::File {
                file: &file,
                pace: crate::spool::Pacer::new(speeds, file.capacity()),
                codec: &big,
            },
            |c| {
                let k = produced.load(Ordering::SeqCst);
                if k == 2000 {
                    return Ok(false);
                }
                *c = k;
                produced.store(k + 1, Ordering::SeqCst);
                Ok(true)
            },
            vec![|c: &mut u32, s: &mut u32| {
                *s = *c;
                Ok(())
            }],
            |_: &mut u32| Ok(()),
            |s| {
                seen.push((*s, produced.load(Ordering::SeqCst)));
                most_in_file = most_in_file.max(file.allocated());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen.iter().map(|x| x.0).collect::<Vec<_>>(),
            (0..2000).collect::<Vec<_>>()
        );
        assert!(
            seen[100].1 < 2000,
            "the 100th item was consumed only after the source ended: {:?}",
            &seen[..110]
        );
        // Only the first window went through the file (a few pages).
        assert!(most_in_file <= 64 << 10, "{most_in_file} bytes in the file");

        // Slow: an item of 64 KiB every 100 ms at least (0.65 MB/s at most, under the
        // lowest speed) is accumulated: nothing is consumed before the source ends (the
        // burst for that rate starts at about 10 MB, more than the 24 items).
        let produced = AtomicU32::new(0);
        let mut seen = Vec::new();
        run_buffered::<u32, u32, String, _, _, _, _>(
            2,
            Buffer::File {
                file: &file,
                pace: crate::spool::Pacer::new(speeds, file.capacity()),
                codec: &big,
            },
            |c| {
                let k = produced.load(Ordering::SeqCst);
                if k == 24 {
                    return Ok(false);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                *c = k;
                produced.store(k + 1, Ordering::SeqCst);
                Ok(true)
            },
            vec![|c: &mut u32, s: &mut u32| {
                *s = *c;
                Ok(())
            }],
            |_: &mut u32| Ok(()),
            |s| {
                seen.push((*s, produced.load(Ordering::SeqCst)));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(
            seen.iter().map(|x| x.0).collect::<Vec<_>>(),
            (0..24).collect::<Vec<_>>()
        );
        assert_eq!(
            seen[0].1, 24,
            "consumed before the slow source ended: {seen:?}"
        );
    }

    #[test]
    fn an_error_with_a_file_spool_stops_the_pipeline_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let file = crate::spool::SpoolFile::create(dir.path(), 64).unwrap();
        // read, compress, stage, decode, write; then a record larger than the spool.
        for failing in 0..6 {
            let codec = U32Codec::new((failing == 3).then_some(30));
            let r = run_buffered::<u32, u32, String, _, _, _, _>(
                2,
                Buffer::File {
                    file: &file,
                    pace: crate::spool::Pacer::fixed(32),
                    codec: &codec,
                },
                counting_source(failing),
                vec![|c: &mut u32, s: &mut u32| failing_transform(c, s, failing)],
                |s: &mut u32| {
                    if failing == 2 && *s == 50 {
                        return Err("stage failed".to_string());
                    }
                    if failing == 5 && *s == 40 {
                        *s = 1 << 20; // encodes to 4 + 4 + (2^20 % 7 = 2) bytes: fits
                        return Ok(());
                    }
                    Ok(())
                },
                |s| {
                    if failing == 4 && *s == 20 {
                        return Err("write failed".into());
                    }
                    if failing == 5 && *s == 1 << 20 {
                        return Err("the big one arrived".into());
                    }
                    Ok(())
                },
            );
            let want = [
                "read failed",
                "compress failed",
                "stage failed",
                "decode failed",
                "write failed",
                "the big one arrived",
            ][failing];
            assert_eq!(r.unwrap_err(), want);
        }
        // A record larger than the whole spool: refused with the way out, no hang.
        let big = crate::spool::SpoolFile::create(dir.path(), 8).unwrap();
        let r = run_buffered::<u32, u32, String, _, _, _, _>(
            2,
            Buffer::File {
                file: &big,
                pace: crate::spool::Pacer::fixed(4),
                codec: &U32Codec::new(None),
            },
            counting_source(usize::MAX),
            vec![copy],
            |_: &mut u32| Ok(()),
            |_| Ok(()),
        );
        let e = r.unwrap_err();
        assert!(e.contains("does not fit") && e.contains("--spool"), "{e}");
    }

    #[test]
    fn a_spool_file_that_fails_to_be_written_is_left_and_the_run_goes_on_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // Paced for a drive of 1 GB/s down to 1 KB/s (a window of 1 MiB): the spool
        // probes through the file, then streams through memory.
        let speeds = crate::spool::DriveSpeeds {
            native: 1_000_000_000,
            min: 1_000,
            reposition_s: 1.0,
        };
        for (fail_from, paced) in [
            (0u64, false),
            (150, false),
            (1000, false),
            (0, true),
            (150, true),
        ] {
            let mut file = crate::spool::SpoolFile::create(dir.path(), 400).unwrap();
            let pace = if paced {
                crate::spool::Pacer::new(speeds, 400)
            } else {
                crate::spool::Pacer::fixed(100)
            };
            file.fail_from = Some(fail_from);
            let codec = U32Codec::new(None);
            let mut next = 0u32;
            let mut seen = Vec::new();
            run_buffered::<u32, u32, String, _, _, _, _>(
                2,
                Buffer::File {
                    file: &file,
                    pace,
                    codec: &codec,
                },
                |c| {
                    if next == 500 {
                        return Ok(false);
                    }
                    *c = next;
                    next += 1;
                    Ok(true)
                },
                vec![copy],
                |_: &mut u32| Ok(()),
                |s| {
                    seen.push(*s);
                    Ok(())
                },
            )
            .unwrap();
            assert_eq!(
                seen,
                (0..500).collect::<Vec<_>>(),
                "failing from {fail_from}, paced {paced}"
            );
            let failures = codec.failures.lock().unwrap();
            assert_eq!(failures.len(), 1, "told once: {failures:?}");
            assert!(failures[0].contains("--spool"), "{failures:?}");
        }
    }
}
