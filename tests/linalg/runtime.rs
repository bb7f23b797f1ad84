//! The runtime layer: adapter choice, embedding through `Gpu::from_wgpu`, recording into a caller's encoder,
//! per-stage timing, the parameter block, and limits.

use crate::cpu::*;
use wgoptim::linalg::*;
use wgoptim::{Error, Gpu, GpuOptions, PlanBuilder, Tensor};

#[test]
fn unknown_adapter_name_is_a_clear_error() {
    let opts = GpuOptions { adapter_name: Some("no-such-adapter-xyz".into()), ..GpuOptions::default() };
    match pollster::block_on(Gpu::new(opts)) {
        Err(Error::NoAdapter { detail }) => assert!(detail.contains("no-such-adapter-xyz")),
        other => panic!("expected NoAdapter, got {other:?}"),
    }
}

#[test]
fn embedding_uses_the_callers_device_buffers_and_encoder() {
    // The host engine owns the device and the buffers; wgoptim only records work into its encoder.
    let host = gpu();
    let (device, queue) = (host.device().clone(), host.queue().clone());
    let embedded = Gpu::from_wgpu(device.clone(), queue.clone());
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let own = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host"),
        size: 4 * 64,
        usage,
        mapped_at_creation: false,
    });
    let data: Vec<f32> = (0..32).map(|i| i as f32).collect();
    queue.write_buffer(&own, 0, bytemuck::cast_slice(&data));
    // Two 4×4 views at element offsets 0 and 16 of the host's buffer; the result goes into a third view.
    let a = Tensor::from_buffer(&embedded, own.clone(), 0, &[4, 4]).unwrap();
    let b = Tensor::from_buffer(&embedded, own.clone(), 16, &[4, 4]).unwrap();
    let out_buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host out"),
        size: 4 * 16,
        usage,
        mapped_at_creation: false,
    });
    let out = Tensor::from_buffer(&embedded, out_buf, 0, &[4, 4]).unwrap();
    let mut pb = PlanBuilder::new(&embedded);
    Matmul::new(&a, &b, &out).record(&mut pb).unwrap();
    let plan = pb.build().unwrap();
    let mut encoder = device.create_command_encoder(&Default::default());
    plan.record(&mut encoder);
    queue.submit([encoder.finish()]);
    let got = out.read_blocking().unwrap();
    let am = Mat::from_f32(4, 4, &data[..16]);
    let bm = Mat::from_f32(4, 4, &data[16..]);
    assert_eq!(got, am.mul(&bm).f32s());
    assert!(Tensor::from_buffer(&embedded, own, 60, &[4, 4]).is_err(), "a view past the end is refused");
}

#[test]
fn stage_timing_and_parameter_block() {
    let gpu = gpu();
    let x = Tensor::from_slice(&gpu, &[64, 64], &vec![1.0; 64 * 64]).unwrap();
    let y = Tensor::zeros(&gpu, &[64, 64]).unwrap();
    let mut pb = PlanBuilder::new(&gpu).with_timing(true);
    let params = pb.step_params(2).unwrap();
    pb.stage("gram");
    gram(&mut pb, &x, GramSide::Rows, &y, 1.0, None, 0.0, Precision::F32).unwrap();
    pb.stage("scale");
    // y *= params[0] (the parameter block is a one-matrix stack of scalars here).
    Axpby { x: Some(&y), scale: Some(BatchScalar::of(&params)), ..Axpby::new(&y) }.record(&mut pb).unwrap();
    let plan = pb.build().unwrap();
    assert_eq!(plan.stages(), ["gram", "scale"]);
    plan.set_params(&[0.5, 0.0]).unwrap();
    assert!(plan.set_params(&[1.0; 3]).is_err());
    if gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
        let times = pollster::block_on(plan.run_timed()).unwrap();
        assert_eq!(times.len(), 2);
        assert!(times.iter().all(|(_, s)| s.is_finite() && *s >= 0.0));
    } else {
        plan.run();
    }
    assert!(y.read_blocking().unwrap().iter().all(|&v| v == 32.0));
}

#[test]
fn limits_and_mismatches_are_errors() {
    let gpu = gpu();
    let limit = gpu.limits().max_storage_buffer_binding_size as usize;
    let mut pb = PlanBuilder::new(&gpu);
    // One element past the binding limit (allocating is fine, binding is not).
    if (limit / 4 + 1) * 4 <= gpu.limits().max_buffer_size as usize {
        let big = Tensor::zeros(&gpu, &[1, limit / 4 + 1]).unwrap();
        let out = Tensor::zeros(&gpu, &[1, 1]).unwrap();
        assert!(matches!(reduce(&mut pb, &big, ReduceOp::Sum, 1, &out), Err(Error::BindingTooLarge { .. })));
    }
    let other = Gpu::new_blocking().unwrap();
    let a = Tensor::zeros(&gpu, &[2, 2]).unwrap();
    let b = Tensor::zeros(&other, &[2, 2]).unwrap();
    let o = Tensor::zeros(&gpu, &[2, 2]).unwrap();
    assert!(matches!(Matmul::new(&a, &b, &o).record(&mut pb), Err(Error::DeviceMismatch { .. })));
    assert!(matches!(a.write(&[1.0; 3]), Err(Error::Shape { .. })));
    assert!(matches!(a.reshape(&[3]), Err(Error::Shape { .. })));
    // Reading and writing views of one buffer in one dispatch is writable aliasing, which WebGPU rejects.
    let flat = Tensor::zeros(&gpu, &[8]).unwrap();
    let x = Tensor::from_buffer(&gpu, flat.buffer().clone(), 0, &[2, 2]).unwrap();
    let y = Tensor::from_buffer(&gpu, flat.buffer().clone(), 4, &[2, 1]).unwrap();
    match reduce(&mut pb, &x, ReduceOp::Sum, 1, &y) {
        Err(Error::InvalidArgument { detail, .. }) => assert!(detail.contains("share one buffer"), "{detail}"),
        other => panic!("aliasing accepted: {other:?}"),
    }
    // Overlap is about elements: x (0..4) and y (4..6) share a buffer but none; an empty view overlaps nothing.
    let z = Tensor::from_buffer(&gpu, flat.buffer().clone(), 3, &[2]).unwrap();
    let empty = Tensor::from_buffer(&gpu, flat.buffer().clone(), 2, &[0]).unwrap();
    assert!(!x.overlaps(&y) && !y.overlaps(&x) && x.overlaps(&x));
    assert!(z.overlaps(&x) && z.overlaps(&y) && x.overlaps(&z));
    assert!(!empty.overlaps(&x) && !x.overlaps(&empty) && !x.overlaps(&o));
    // A kernel given fewer tensors than its entry point binds is an error, not a driver failure later.
    let sort = gpu.kernel("linalg/tridiag_ql.wgsl", "sort", &[("WG", "64".into()), ("WARM", "0".into())]).unwrap();
    match pb.dispatch(&sort, &[2u32, 8, 0, 0], &[&a, &o], [1, 1, 1]) {
        Err(Error::InvalidArgument { detail, .. }) => assert!(detail.contains("uses binding"), "{detail}"),
        other => panic!("missing tensors accepted: {other:?}"),
    }
}
