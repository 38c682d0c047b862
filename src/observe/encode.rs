//! The few shapes of metric the observer writes, on top of prometheus-client's
//! [`DescriptorEncoder`]: a plain counter or gauge, a family with one label, a histogram.
//! Shared by [`super::exposition`] and the MySQL sink's metrics.
//!
//! Invariant: every value is a `u64` read from a snapshot, so encoding takes no lock and
//! cannot disagree with itself within one scrape.

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

pub(super) type R = Result<(), std::fmt::Error>;

pub(super) fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> R {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

pub(super) fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> R {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    m.encode_gauge(&v)
}

/// A counter family with one label (see [`family`]).
pub(super) fn counter_family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &'static str,
    values: impl Iterator<Item = (String, u64)>,
) -> R {
    family(e, MetricType::Counter, (name, help, label), values)
}

pub(super) fn family(
    e: &mut DescriptorEncoder,
    kind: MetricType,
    (name, help, label): (&str, &str, &'static str),
    values: impl Iterator<Item = (String, u64)>,
) -> R {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (value, n) in values {
        let labels = [(label, value)];
        let mut f = m.encode_family(&labels)?;
        match kind {
            MetricType::Gauge => f.encode_gauge(&(n as i64))?,
            _ => f.encode_counter::<NoLabelSet, _, u64>(&n, None)?,
        }
    }
    Ok(())
}

pub(super) fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    h: &Histogram,
) -> R {
    h.encode(e.encode_descriptor(name, help, unit, h.metric_type())?)
}

/// A histogram kept as fixed buckets elsewhere (not cumulative, the last one `+Inf`).
pub(super) fn fixed_histogram(
    e: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    sum: f64,
    buckets: &[(f64, u64)],
) -> R {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Histogram)?;
    let count = buckets.iter().map(|&(_, n)| n).sum();
    m.encode_histogram::<NoLabelSet>(sum, count, buckets, None)
}
