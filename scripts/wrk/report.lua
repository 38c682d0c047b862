-- wrk `done` hook shared by every load-test run: one machine-readable line that
-- scripts/load_test.py parses, so the driver never depends on wrk's human layout.
-- wrk's --latency table stops at p99; p99.9 is only available from this hook.
-- Latencies are closed-loop (coordinated omission): a stalled server delays the next
-- request instead of being charged for it, so tails are optimistic under saturation.

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "PSC_WRK requests=%d duration_us=%d connect=%d read=%d write=%d timeout=%d " ..
      "non2xx=%d p50_us=%d p99_us=%d p999_us=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout,
      e.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
