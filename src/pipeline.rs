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
    mut produce: P,
    mut transform: T,
    mut consume: K,
) -> Result<StageTimes, E>
where
    C: Default + Send,
    S: Default + Send,
    E: Send,
    P: FnMut(&mut C) -> Result<bool, E> + Send,
    T: FnMut(&mut C, &mut S) -> Result<(), E> + Send,
    K: FnMut(&mut S) -> Result<(), E>,
{
    let depth = depth.max(1);
    let started = Instant::now();
    // Forward queues and the return (recycling) queues.
    let (tx_c, rx_c): (SyncSender<C>, Receiver<C>) = sync_channel(depth);
    let (ret_c_tx, ret_c_rx): (SyncSender<C>, Receiver<C>) = sync_channel(depth + 2);
    let (tx_s, rx_s): (SyncSender<S>, Receiver<S>) = sync_channel(depth);
    let (ret_s_tx, ret_s_rx): (SyncSender<S>, Receiver<S>) = sync_channel(depth + 2);

    std::thread::scope(|scope| {
        let producer = scope.spawn(move || -> Result<Duration, E> {
            let mut busy = Duration::ZERO;
            let mut made = 0usize;
            loop {
                let mut item = match ret_c_rx.try_recv() {
                    Ok(c) => c,
                    Err(_) if made < depth + 2 => {
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
                if tx_c.send(item).is_err() {
                    return Ok(busy); // downstream stopped; its error is reported
                }
            }
        });
        let transformer = scope.spawn(move || -> Result<Duration, E> {
            let mut busy = Duration::ZERO;
            let mut made = 0usize;
            for mut item in rx_c.iter() {
                let mut out = match ret_s_rx.try_recv() {
                    Ok(s) => s,
                    Err(_) if made < depth + 2 => {
                        made += 1;
                        S::default()
                    }
                    Err(_) => match ret_s_rx.recv() {
                        Ok(s) => s,
                        Err(_) => return Ok(busy),
                    },
                };
                timed(&mut busy, || transform(&mut item, &mut out))?;
                let _ = ret_c_tx.try_send(item);
                if tx_s.send(out).is_err() {
                    return Ok(busy);
                }
            }
            Ok(busy)
        });
        let mut result = Ok(());
        let mut consume_busy = Duration::ZERO;
        for mut out in rx_s.iter() {
            if let Err(e) = timed(&mut consume_busy, || consume(&mut out)) {
                result = Err(e);
                break;
            }
            let _ = ret_s_tx.try_send(out);
        }
        // Dropping the receivers (by leaving scope) unblocks the other stages.
        drop(rx_s);
        drop(ret_s_tx);
        let t = transformer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        let p = producer
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        result?;
        Ok(StageTimes {
            transform_s: t?.as_secs_f64(),
            produce_s: p?.as_secs_f64(),
            consume_s: consume_busy.as_secs_f64(),
            wall_s: started.elapsed().as_secs_f64(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut n = 0u32;
            let r = run::<u32, u32, String, _, _, _>(
                2,
                |c| {
                    n += 1;
                    *c = n;
                    if failing == 0 && n == 50 {
                        return Err("read failed".into());
                    }
                    Ok(true) // endless unless something stops it
                },
                |c, s| {
                    if failing == 1 && *c == 50 {
                        return Err("compress failed".into());
                    }
                    *s = *c;
                    Ok(())
                },
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
}
