//! Admission decision cost with 10,000 tenants configured.
//! Run: `cargo bench -p sbc-core --bench admission`
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use sbc_core::admission::Admission;
use sbc_core::config::Limits;
use sbc_core::tenant::TenantId;

const TENANTS: usize = 10_000;

fn admission(c: &mut Criterion) {
    let ids: Vec<TenantId> = (0..TENANTS)
        .map(|i| TenantId::from(format!("tenant-{i}").as_str()))
        .collect();
    let limits = Limits {
        calls_per_second: 1e6,
        call_burst: 1_000_000,
        max_concurrent_calls: 1_000_000,
        max_pending_invites: 1_000_000,
        ..Limits::default()
    };
    let adm = Admission::with_limits(ids.iter().map(|id| (id.clone(), limits)));
    let now = Instant::now();
    let mut i = 0usize;
    let mut g = c.benchmark_group("admission");
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("admit_and_release_10k_tenants", |b| {
        b.iter(|| {
            i = (i + 7919) % TENANTS;
            let a = adm.admit_call(black_box(&ids[i]), now);
            black_box(a.is_ok())
        })
    });
    // The same decision with one tenant configured: the cost must not grow with tenants.
    let one = Admission::with_limits([(ids[0].clone(), limits)]);
    g.bench_function("admit_and_release_1_tenant", |b| {
        b.iter(|| {
            let a = one.admit_call(black_box(&ids[0]), now);
            black_box(a.is_ok())
        })
    });
    let tight = Admission::with_limits(ids.iter().map(|id| {
        (
            id.clone(),
            Limits {
                calls_per_second: 1.0,
                call_burst: 1,
                max_concurrent_calls: 1,
                ..Limits::default()
            },
        )
    }));
    g.bench_function("refuse_10k_tenants", |b| {
        let held: Vec<_> = ids
            .iter()
            .filter_map(|id| tight.admit_call(id, now).ok())
            .collect();
        b.iter(|| {
            i = (i + 7919) % TENANTS;
            black_box(tight.admit_call(black_box(&ids[i]), now).is_err())
        });
        drop(held);
    });
    g.finish();
}

criterion_group!(benches, admission);
criterion_main!(benches);
