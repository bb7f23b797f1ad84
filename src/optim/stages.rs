//! Recording a step's stages into the plan: the device records of groups, the Muon family's pipeline around the
//! polar factor, Schedule-Free mode plans, update diagnostics, and Adafactor's per-tensor layout.

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, PlanBuilder, Tensor};
use crate::optim::builder::ParamEntry;
use crate::optim::optimizer::{Bucket, ChunkTable, Diagnostics, ModePlans, ParamSlot, StackParts, StateView};
use crate::optim::{Group, OptimizerConfig, StepSizeRule};

/// Elements per chunk of a bucket (one workgroup each).
pub(crate) const CHUNK: usize = 4096;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct GroupUniform {
    lr: f32,
    beta1: f32,
    beta2: f32,
    kind: u32,
    warmup: f32,
    total: f32,
    decay: f32,
    min_ratio: f32,
    m_kind: u32,
    m_start: f32,
    m_warmup: f32,
    m_cooldown: f32,
    m_total: f32,
    sf: u32,
    r: f32,
    wlp: f32,
    sfp: u32,
    sf_b1: f32,
    sf_max: f32,
    anneal: f32,
    polyak_beta: f32,
    c_warmup: f32,
    eps: f32,
    _q: f32,
    _pad: [f32; 8],
}

/// The uniforms of optim/muon.wgsl, whose phases run over a bucket's chunk table (the Muon and Kronecker families).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StackUniform {
    chunks: u32,
    group: u32,
    groups_x: u32,
    flags: u32,
    wd: f32,
    sf_beta: f32,
    _p: [f32; 2],
}

impl StackUniform {
    pub(crate) fn new(t: &ChunkTable, group: usize, flags: u32, wd: f32) -> StackUniform {
        StackUniform {
            chunks: t.chunks as u32,
            group: group as u32,
            groups_x: grid(t.chunks).0,
            flags,
            wd,
            sf_beta: 0.0,
            _p: [0.0; 2],
        }
    }

    /// The same with the rate of SPlus's parameter EMA.
    pub(crate) fn with_ema_rate(self, r: f32) -> StackUniform {
        StackUniform { sf_beta: r, ..self }
    }
}

/// Muon's update for one bucket: momentum (or a copy of the gradient for outside placement), one batched polar
/// call per same-shape stack, then the scaled apply.
pub(crate) fn record_muon(
    plan: &mut PlanBuilder,
    c: &crate::optim::MuonConfig,
    family: &OptimizerConfig,
    b: &Bucket,
    parts: &StackParts,
    scalars: &Tensor,
    wg: u32,
) -> Result<()> {
    let gpu = plan.gpu().clone();
    let normuon = family.normuon();
    let sf = match family {
        OptimizerConfig::SfNorMuon(s) => Some(s),
        _ => None,
    };
    let state = |name: &str| b.state(name);
    let adamuon = match family {
        OptimizerConfig::AdaMuon(a) => Some(a),
        _ => None,
    };
    let outside = c.momentum_placement == crate::optim::MomentumPlacement::Outside;
    let spec = OptimizerConfig::Muon(c.clone()).kernel();
    let mom = &b.states[0].1;
    let kernel = |t: &ChunkTable, phase: &str| {
        let ty = if t.vec4 { "vec4<f32>" } else { "f32" };
        let on = |p: &str| ((phase == p) as u32).to_string();
        gpu.kernel(
            "optim/muon.wgsl",
            "main",
            &[
                ("T", ty.into()),
                ("WG", wg.to_string()),
                ("MOMENTUM", on("momentum")),
                ("COPY", on("copy")),
                ("APPLY", on("apply")),
                ("APPLY_SF", on("apply_sf")),
                ("OUTSIDE", (outside as u32).to_string()),
                ("SIGN", adamuon.is_some_and(|a| a.variant == crate::optim::AdaMuonVariant::Official).to_string()),
                (
                    "BIASCORR",
                    adamuon.is_some_and(|a| a.variant == crate::optim::AdaMuonVariant::Simplified).to_string(),
                ),
            ],
        )
    };
    let uniforms = |t: &ChunkTable| StackUniform::new(t, b.group, spec.flags, c.weight_decay);
    for t in &b.tables {
        let (gx, gy) = grid(t.chunks);
        if outside {
            plan.dispatch(&kernel(t, "copy")?, &uniforms(t), &[&t.table, scalars, &b.grad, &parts.ns_in], [gx, gy, 1])?;
        } else {
            plan.dispatch(
                &kernel(t, "momentum")?,
                &uniforms(t),
                &[&t.table, scalars, &b.grad, mom, &parts.ns_in],
                [gx, gy, 1],
            )?;
        }
    }
    let view = |t: &Tensor, &(offset, count, m, n, _): &(usize, usize, usize, usize, usize)| {
        Tensor::from_buffer(&gpu, t.buffer().clone(), offset, &[count, m, n])
    };
    let views = parts
        .stacks
        .iter()
        .map(|st| Ok((view(&parts.ns_in, st)?, view(&parts.ns_out, st)?)))
        .collect::<Result<Vec<_>>>()?;
    let pairs: Vec<(&Tensor, &Tensor)> = views.iter().map(|(g, o)| (g, o)).collect();
    crate::linalg::polar_stacks(plan, &pairs, &c.polar)?;
    for (&(offset, count, m, n, v_off), shape) in parts.stacks.iter().zip(&parts.stack_shapes) {
        if let Some(nm) = &normuon {
            let paper = (nm.scaling == crate::optim::NorMuonScaling::PaperRms02) as u32;
            #[repr(C)]
            #[derive(Clone, Copy, Pod, Zeroable)]
            struct N {
                rows: u32,
                cols: u32,
                o_off: u32,
                v_off: u32,
                beta2: f32,
                paper: u32,
                group: u32,
                total: u32,
                blocks: u32,
                _pad: [u32; 3],
            }
            // Normalization groups: each matrix, or each (out, in) kernel of a convolution (rows kh × kw).
            let (rows, cols) = match shape[..] {
                [_, _, kh, kw] => (kh, kw),
                _ => (m, n),
            };
            let total = count * m * n / (rows * cols);
            let lanes_per_row = if gpu.is_cpu() { 1 } else { NORM_GPU_LANES_PER_ROW };
            let blocks = rows.div_ceil(NORM_LANES / lanes_per_row).min(MAX_GROUPS);
            let u = N {
                rows: rows as u32,
                cols: cols as u32,
                o_off: offset as u32,
                v_off: v_off as u32,
                beta2: nm.beta2,
                paper,
                group: b.group as u32,
                total: total as u32,
                blocks: blocks as u32,
                _pad: [0; 3],
            };
            let (gx, gy) = grid(total);
            let part = plan.scratch(&[total * blocks * 2])?;
            let tensors = [scalars, &parts.ns_out, state("second_momentum_buffer")?, &part];
            for stats in ["1", "0"] {
                let defines = [("STATS", stats.to_string()), ("LPR", lanes_per_row.to_string())];
                let kernel = gpu.kernel("optim/normuon.wgsl", "main", &defines)?;
                plan.dispatch(&kernel, &u, &tensors, [blocks as u32, gx, gy])?;
            }
        }
        if let Some(am) = adamuon {
            #[repr(C)]
            #[derive(Clone, Copy, Pod, Zeroable)]
            struct A {
                size: u32,
                o_off: u32,
                group: u32,
                simplified: u32,
                eps: f32,
                minmax: f32,
                beta2: f32,
                scale: f32,
                blocks: u32,
                block: u32,
                _pad: [u32; 2],
            }
            // 0.2·sqrt(min·max) over the parameter's own dims (all four for a convolution, as the reference does).
            let minmax = (shape.iter().min().copied().unwrap_or(1) * shape.iter().max().copied().unwrap_or(1)) as f32;
            let simplified = am.variant == crate::optim::AdaMuonVariant::Simplified;
            let blocks = (m * n).div_ceil(ADAMUON_BLOCK).min(MAX_GROUPS);
            let u = A {
                size: (m * n) as u32,
                o_off: offset as u32,
                group: b.group as u32,
                simplified: simplified as u32,
                eps: am.eps,
                minmax,
                beta2: am.beta2,
                scale: crate::optim::AdjustLr::Keller.scale_for(shape),
                blocks: blocks as u32,
                block: (m * n).div_ceil(blocks) as u32,
                _pad: [0; 2],
            };
            // The simplified form never reads or writes `part`; one value fills the binding.
            let part = plan.scratch(&[if simplified { 1 } else { count * blocks }])?;
            let tensors = [scalars, &parts.ns_out, &b.states[1].1, &part];
            // The simplified form is elementwise: its one pass is STATS'.
            for stats in if simplified { &["1"][..] } else { &["1", "0"][..] } {
                let kernel = gpu.kernel("optim/adamuon.wgsl", "main", &[("STATS", (*stats).into())])?;
                plan.dispatch(&kernel, &u, &tensors, [blocks as u32, count as u32, 1])?;
            }
        }
    }
    if let Some(sfc) = sf {
        // Schedule-Free apply on z and x; the parameters get y = (1−β1) z + β1 x.
        for t in &b.tables {
            let (gx, gy) = grid(t.chunks);
            let u = StackUniform { wd: sfc.weight_decay, sf_beta: sfc.beta1, ..uniforms(t) };
            plan.dispatch(
                &kernel(t, "apply_sf")?,
                &u,
                &[&t.table, scalars, &b.param, &parts.ns_out, state("z")?, state("x")?],
                [gx, gy, 1],
            )?;
        }
        return Ok(());
    }
    for t in &b.tables {
        let (gx, gy) = grid(t.chunks);
        let scale = t.scale.as_ref().ok_or_else(|| Error::Device("muon chunk table without scales".into()))?;
        let mut tensors = vec![&t.table, scalars, scale, &b.param, &parts.ns_out];
        if outside {
            tensors.push(mom);
        }
        plan.dispatch(&kernel(t, "apply")?, &uniforms(t), &tensors, [gx, gy, 1])?;
    }
    Ok(())
}

/// Adafactor's per-tensor state layout (factored over the last two dims when ndim ≥ 2: rows, then columns, then
/// one mean-of-rows scratch value per leading index; else a full second moment) and its tensor-table row.
pub(crate) fn adafactor_layout(
    p: &ParamEntry,
    momentum: bool,
    rows_out: &mut Vec<u32>,
    state: &mut usize,
    mom: &mut usize,
) -> Result<Vec<StateView>> {
    let shape = p.param.shape();
    let n = p.param.numel();
    let factored = shape.len() >= 2;
    let (lead, batch, rows, cols) = if factored {
        let lead = &shape[..shape.len() - 2];
        (lead.to_vec(), lead.iter().product::<usize>(), shape[shape.len() - 2], shape[shape.len() - 1])
    } else {
        (Vec::new(), 1, 1, n)
    };
    let mut views = Vec::new();
    let s_off = *state;
    if factored {
        views.push(StateView {
            name: "exp_avg_sq_row".into(),
            buffer: 0,
            offset: s_off,
            shape: [lead.clone(), vec![rows]].concat(),
        });
        views.push(StateView {
            name: "exp_avg_sq_col".into(),
            buffer: 0,
            offset: s_off + batch * rows,
            shape: [lead, vec![cols]].concat(),
        });
        *state += batch * (rows + cols + 1);
    } else {
        views.push(StateView { name: "exp_avg_sq".into(), buffer: 0, offset: s_off, shape: shape.to_vec() });
        *state += n;
    }
    if momentum {
        views.push(StateView { name: "exp_avg".into(), buffer: 1, offset: *mom, shape: shape.to_vec() });
    }
    let fields = [p.param.offset(), p.grad.offset(), batch, rows, cols, s_off, *mom, factored as usize];
    if fields.iter().any(|&v| u32::try_from(v).is_err()) || u32::try_from(*state).is_err() {
        return Err(Error::InvalidArgument {
            op: "OptimizerBuilder::build",
            name: "param",
            detail: format!("`{}` lies beyond 2^32 elements", p.name),
        });
    }
    rows_out.extend(fields.iter().map(|&v| v as u32));
    *mom += n;
    Ok(views)
}

/// Lanes per workgroup of normuon.wgsl (its `WG`), and its lanes per row on GPUs (`LPR`; CPU adapters take 1).
const NORM_LANES: usize = 64;
const NORM_GPU_LANES_PER_ROW: usize = 16;
/// Values per workgroup of adamuon.wgsl (fewer workgroups, with more each, past MAX_GROUPS of them).
const ADAMUON_BLOCK: usize = 1024;
/// The most workgroups along one dimension of a dispatch (WebGPU's default limit).
pub(crate) const MAX_GROUPS: usize = 65535;

/// A 2-D grid of at least `chunks` workgroups, at most MAX_GROUPS along x.
pub(crate) fn grid(chunks: usize) -> (u32, u32) {
    let gx = (chunks as u32).clamp(1, MAX_GROUPS as u32);
    (gx, (chunks as u32).div_ceil(gx).max(1))
}

pub(crate) fn encode_group(g: &Group) -> GroupUniform {
    let spec = g.optimizer.kernel();
    let (kind, warmup, total, decay, min_ratio) = g.schedule.encode();
    let m = g.momentum;
    let plus = plus_fields(&g.optimizer);
    GroupUniform {
        lr: g.optimizer.lr(),
        beta1: spec.beta1,
        beta2: spec.beta2,
        kind,
        warmup,
        total,
        decay,
        min_ratio,
        m_kind: m.is_some() as u32,
        m_start: m.map_or(0.0, |m| m.start),
        m_warmup: m.map_or(0.0, |m| m.warmup as f32),
        m_cooldown: m.map_or(0.0, |m| m.cooldown as f32),
        m_total: m.map_or(0.0, |m| m.total as f32),
        // 1: Schedule-Free weights from lr_max (facebookresearch); 2: from the current lr (SF-NorMuon, §8.6).
        sf: if matches!(g.optimizer, OptimizerConfig::SfNorMuon(_)) { 2 } else { spec.schedule_free.is_some() as u32 },
        r: spec.schedule_free.map_or(plus.r, |s| s.0),
        wlp: spec.schedule_free.map_or(plus.wlp, |s| s.1),
        ..plus
    }
}

/// The ScheduleFree+ part of a group's device record (zeros for other optimizers; `r`/`wlp` shared with
/// Schedule-Free).
fn plus_fields(o: &OptimizerConfig) -> GroupUniform {
    let zero = GroupUniform::zeroed();
    match *o {
        OptimizerConfig::ScheduleFreePlus(c) => GroupUniform {
            sfp: 1,
            r: c.r,
            wlp: c.weight_lr_power,
            sf_b1: c.sf_beta1,
            sf_max: c.sf_beta1_max,
            anneal: c.sf_beta1_anneal_steps as f32,
            polyak_beta: c.polyak_beta,
            c_warmup: c.c_warmup as f32,
            eps: c.eps,
            ..zero
        },
        _ => zero,
    }
}

/// Copies of the diagnosed matrices before the update stage, and the plan that turns them into the Gram
/// eigenvalues of each update (Δ = before − after, Gram on the small side, Jacobi).
pub(crate) fn diagnostics(
    gpu: &Gpu,
    params: &[ParamEntry],
    names: &[String],
    plan: &mut PlanBuilder,
) -> Result<Option<Diagnostics>> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut after = PlanBuilder::new(gpu);
    let mut entries = Vec::new();
    for name in names {
        let p = params.iter().find(|p| &p.name == name).ok_or_else(|| Error::InvalidArgument {
            op: "OptimizerBuilder::diagnose",
            name: "names",
            detail: format!("no parameter `{name}`"),
        })?;
        let &[m, n] = p.param.shape() else {
            return Err(Error::InvalidArgument {
                op: "OptimizerBuilder::diagnose",
                name: "names",
                detail: format!("`{name}` {:?} is not a matrix", p.param.shape()),
            });
        };
        let before = Tensor::zeros(gpu, &[m, n])?;
        crate::linalg::copy(plan, &p.param, &before)?;
        let k = m.min(n);
        let delta = after.scratch(&[m, n])?;
        crate::linalg::Axpby { x: Some(&before), y: Some(&p.param), b: -1.0, ..crate::linalg::Axpby::new(&delta) }
            .record(&mut after)?;
        let gram = after.scratch(&[1, k, k])?;
        let side = if m > n { crate::linalg::GramSide::Cols } else { crate::linalg::GramSide::Rows };
        crate::linalg::gram(&mut after, &delta, side, &gram, 1.0, None, 0.0, Default::default())?;
        let (vals, vecs) = (Tensor::zeros(gpu, &[1, k])?, after.scratch(&[1, k, k])?);
        crate::linalg::eigh(&mut after, &gram, &vals, &vecs, None, &crate::linalg::EighConfig::default())?;
        entries.push((name.clone(), vals));
    }
    Ok(Some(Diagnostics { plan: after.build()?, entries }))
}

/// Plans for Schedule-Free groups: to eval (y → x), to train (x → y), and the evaluation point into
/// per-bucket buffers; `None` when no group is Schedule-Free.
pub(crate) fn schedule_free_plans(
    gpu: &Gpu,
    groups: &[Group],
    buckets: &[Bucket],
    wg: u32,
) -> Result<Option<ModePlans>> {
    let sf: Vec<&Bucket> = buckets.iter().filter(|b| groups[b.group].optimizer.is_schedule_free()).collect();
    if sf.is_empty() {
        return Ok(None);
    }
    let mut outs = Vec::new();
    let mut plans = Vec::new();
    for (which, to_out) in [(0, false), (1, false), (2, true)] {
        let mut plan = PlanBuilder::new(gpu);
        for b in &sf {
            let beta = groups[b.group].optimizer.kernel().beta1;
            let w = if which == 1 { 1.0 - beta } else { 1.0 - 1.0 / beta };
            let z = &b.states[0].1;
            let out = if to_out { Some(Tensor::zeros(gpu, z.shape())?) } else { None };
            for t in &b.tables {
                let ty = if t.vec4 { "vec4<f32>" } else { "f32" };
                let defines = [("T", ty.to_string()), ("WG", wg.to_string()), ("TO_OUT", (to_out as u32).to_string())];
                let kernel = gpu.kernel("optim/sf_mode.wgsl", "main", &defines)?;
                let (gx, gy) = grid(t.chunks);
                #[repr(C)]
                #[derive(Clone, Copy, Pod, Zeroable)]
                struct M {
                    chunks: u32,
                    groups_x: u32,
                    w: f32,
                    _p: u32,
                }
                let u = M { chunks: t.chunks as u32, groups_x: gx, w, _p: 0 };
                let mut tensors = vec![&t.table, z, &b.param];
                if let Some(o) = &out {
                    tensors.push(o);
                }
                plan.dispatch(&kernel, &u, &tensors, [gx, gy, 1])?;
            }
            if let Some(o) = out {
                outs.push((buckets.iter().position(|x| std::ptr::eq(x, *b)).unwrap_or(0), o));
            }
        }
        plans.push(plan.build()?);
    }
    let eval_point = plans.pop().ok_or_else(|| Error::Device("missing plan".into()))?;
    let to_train = plans.pop().ok_or_else(|| Error::Device("missing plan".into()))?;
    let to_eval = plans.pop().ok_or_else(|| Error::Device("missing plan".into()))?;
    Ok(Some(ModePlans { to_eval, to_train, eval_point, outs }))
}

/// Lay out one bucket: its parameters' chunk tables (vec4 bodies, scalar tails), state buffers and views, and
/// what its optimizer needs besides (Muon stacks and per-chunk scales, Adafactor's tensor table). Pushes each
/// parameter's slot (with its index in the builder) and advances the running chunk count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn layout_bucket(
    gpu: &Gpu,
    params: &[ParamEntry],
    groups: &[Group],
    (b, group): (usize, usize),
    idx: &[usize],
    total_chunks: &mut usize,
    slots: &mut Vec<(usize, ParamSlot)>,
) -> Result<Bucket> {
    let spec = groups[group].optimizer.kernel();
    let muon = groups[group].optimizer.muon_pipeline();
    let kron = groups[group].optimizer.is_kron();
    let stacked = muon.is_some() || kron;
    let normuon = groups[group].optimizer.normuon().is_some();
    let mut row_off = 0usize;
    // Muon, SOAP, Shampoo: same-shape matrices next to each other so each shape is one batched call.
    let mut idx = idx.to_vec();
    if stacked {
        // The Kronecker family takes 2-D matrices; the Muon family also batches (3-D) and convolutions (4-D).
        let two_d = kron;
        let takes = |shape: &[usize]| {
            if two_d {
                shape.len() == 2
            } else {
                crate::optim::config::muon_matrices(shape).is_some()
            }
        };
        if let Some(&i) = idx.iter().find(|&&i| !takes(params[i].param.shape())) {
            let p = &params[i];
            let what = if two_d { "2-D matrices" } else { "2-D, 3-D or 4-D (convolution) tensors" };
            return Err(Error::InvalidArgument {
                op: "OptimizerBuilder::build",
                name: "rules",
                detail: format!(
                    "{} takes {what}; route `{}` {:?} to another optimizer",
                    groups[group].optimizer.name(),
                    p.name,
                    p.param.shape()
                ),
            });
        }
        idx.sort_by_key(|&i| crate::optim::config::muon_matrices(params[i].param.shape()).map(|(_, m, n)| (m, n)));
    }
    let mut stacks: Vec<(usize, usize, usize, usize, usize)> = Vec::new();
    let mut stack_shapes: Vec<Vec<usize>> = Vec::new();
    let (mut vec_scale, mut scalar_scale): (Vec<f32>, Vec<f32>) = (Vec::new(), Vec::new());
    // State ranges start at multiples of 4 so aligned tensors can take the vec4 path.
    let mut state_off = 0usize;
    let mut vec_rows: Vec<u32> = Vec::new();
    let mut scalar_rows: Vec<u32> = Vec::new();
    let adafactor = match groups[group].optimizer {
        OptimizerConfig::Adafactor(c) => Some(c),
        _ => None,
    };
    let (mut af_rows, mut af_state, mut af_mom): (Vec<u32>, usize, usize) = (Vec::new(), 0, 0);
    for &i in &idx {
        let p = &params[i];
        let n = p.param.numel();
        if stacked {
            let (count, m, k) = crate::optim::config::muon_matrices(p.param.shape()).unwrap_or((1, 1, n));
            let s = groups[group].optimizer.lr_scale(p.param.shape());
            let body =
                if p.param.offset().is_multiple_of(4) && p.grad.offset().is_multiple_of(4) { n / 4 * 4 } else { 0 };
            vec_scale.extend(std::iter::repeat_n(s, body.div_ceil(CHUNK)));
            scalar_scale.extend(std::iter::repeat_n(s, (n - body).div_ceil(CHUNK)));
            // Stack with the previous matrix when the shape matches and the layout is contiguous.
            let per = m * k;
            let same_shape = stack_shapes.last().is_some_and(|s| s.as_slice() == p.param.shape());
            match stacks.last_mut() {
                Some(last) if same_shape && per % 4 == 0 && last.0 + last.1 * per == state_off => last.1 += count,
                _ => {
                    stacks.push((state_off, count, m, k, row_off));
                    stack_shapes.push(p.param.shape().to_vec());
                }
            }
        }
        let fits = |v: usize| u32::try_from(v).is_ok();
        if !fits(p.param.offset() + n) || !fits(p.grad.offset() + n) || !fits(state_off + n) {
            return Err(Error::InvalidArgument {
                op: "OptimizerBuilder::build",
                name: "param",
                detail: format!("`{}` lies beyond 2^32 elements", p.name),
            });
        }
        let (po, go) = (p.param.offset(), p.grad.offset());
        let aligned = po % 4 == 0 && go % 4 == 0;
        let body = if aligned { n / 4 * 4 } else { 0 };
        for c in (0..body).step_by(CHUNK) {
            let len = CHUNK.min(body - c);
            vec_rows.extend([
                ((po + c) / 4) as u32,
                ((go + c) / 4) as u32,
                ((state_off + c) / 4) as u32,
                (len / 4) as u32,
            ]);
        }
        for c in (body..n).step_by(CHUNK) {
            let len = CHUNK.min(n - c);
            scalar_rows.extend([(po + c) as u32, (go + c) as u32, (state_off + c) as u32, len as u32]);
        }
        let mut states = match adafactor {
            Some(c) => adafactor_layout(p, c.beta1.is_some(), &mut af_rows, &mut af_state, &mut af_mom)?,
            None => spec
                .states
                .iter()
                .enumerate()
                .map(|(k, name)| StateView {
                    name: name.to_string(),
                    buffer: k,
                    offset: state_off,
                    shape: p.param.shape().to_vec(),
                })
                .collect(),
        };
        if normuon {
            // One second-moment value per row over the last dimension, shaped like the official p[..., 0:1]
            // (a convolution's rows are its (out, in, kh) kernel rows, §3.1 gotcha 3).
            let shape = p.param.shape();
            let rows = n / shape[shape.len() - 1];
            let mut v_shape = shape.to_vec();
            *v_shape.last_mut().expect("a matrix has dimensions") = 1;
            states.push(StateView {
                name: "second_momentum_buffer".into(),
                buffer: spec.states.len(),
                offset: row_off,
                shape: v_shape,
            });
            row_off += rows;
        }
        slots.push((
            i,
            ParamSlot {
                name: p.name.clone(),
                param: p.param.clone(),
                group,
                bucket: b,
                state_offset: state_off,
                states,
            },
        ));
        state_off += n.div_ceil(4) * 4;
    }
    let mut tables = Vec::new();
    for (vec4, rows, scales) in [(true, vec_rows, vec_scale), (false, scalar_rows, scalar_scale)] {
        if rows.is_empty() {
            continue;
        }
        let t = Tensor::zeros(gpu, &[rows.len()])?;
        t.write(bytemuck::cast_slice(&rows))?;
        let scale = if stacked { Some(Tensor::from_slice(gpu, &[scales.len()], &scales)?) } else { None };
        tables.push(ChunkTable { vec4, chunks: rows.len() / 4, chunk_base: *total_chunks, table: t, scale });
        *total_chunks += rows.len() / 4;
    }
    let muon_parts = match stacked {
        true => Some(StackParts {
            ns_in: Tensor::zeros(gpu, &[state_off])?,
            ns_out: Tensor::zeros(gpu, &[state_off])?,
            stacks,
            stack_shapes,
        }),
        false => None,
    };
    let (states, tensor_table) = match adafactor {
        Some(c) => {
            let mut st = vec![("second_moment".to_string(), Tensor::zeros(gpu, &[af_state.max(1)])?)];
            if c.beta1.is_some() {
                st.push(("exp_avg".to_string(), Tensor::zeros(gpu, &[af_mom.max(1)])?));
            }
            let t = Tensor::zeros(gpu, &[af_rows.len()])?;
            t.write(bytemuck::cast_slice(&af_rows))?;
            (st, Some((t, af_rows.len() / 8)))
        }
        None => {
            let mut st: Vec<(String, Tensor)> = spec
                .states
                .iter()
                .map(|s| Ok((s.to_string(), Tensor::zeros(gpu, &[state_off])?)))
                .collect::<Result<_>>()?;
            if normuon {
                st.push(("second_momentum_buffer".to_string(), Tensor::zeros(gpu, &[row_off.max(1)])?));
            }
            (st, None)
        }
    };
    let mut bucket = Bucket {
        group,
        tables,
        tensor_table,
        stack: muon_parts,
        kron: None,
        grad: params[idx[0]].grad.clone(),
        param: params[idx[0]].param.clone(),
        states,
    };
    crate::optim::kron::attach(gpu, &groups[group].optimizer, &mut bucket, b, slots)?;
    Ok(bucket)
}

/// The step's device-side bookkeeping: counters (u32: skipped, attempted, per-group applied steps), the per-step
/// scalars the prologue writes, the groups' records, and persistent group state (Schedule-Free sums, Polyak EMAs).
pub(crate) struct DeviceState {
    pub counters: Tensor,
    pub scalars: Tensor,
    pub group_buf: Tensor,
    pub gstate: Tensor,
}

impl DeviceState {
    pub(crate) fn new(gpu: &Gpu, groups: &[Group]) -> Result<DeviceState> {
        let counters = Tensor::zeros(gpu, &[2 + groups.len()])?;
        let scalars = Tensor::zeros(gpu, &[8 + 16 * groups.len()])?;
        let group_data: Vec<GroupUniform> = groups.iter().map(encode_group).collect();
        let group_buf = Tensor::zeros(gpu, &[groups.len() * 32])?;
        group_buf.write(bytemuck::cast_slice(&group_data))?;
        let gstate = Tensor::zeros(gpu, &[groups.len() * 4 + 8])?;
        // Per group [lr_max, weight_sum, 0, 0] (lr_max starts at −1, or at eps for ScheduleFree+); then the Polyak
        // rule's [loss EMA, norm EMA, ratio, 0] and ScheduleFree+'s [e, 0, 0, 0].
        let mut init: Vec<f32> = groups
            .iter()
            .flat_map(|g| match g.optimizer {
                OptimizerConfig::ScheduleFreePlus(c) => [c.eps, 0.0, 0.0, 0.0],
                _ => [-1.0, 0.0, 0.0, 0.0],
            })
            .collect();
        init.extend([0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        gstate.write(&init)?;
        Ok(DeviceState { counters, scalars, group_buf, gstate })
    }
}

/// Step options the prologue needs.
pub(crate) struct StepOptions<'a> {
    pub clip: Option<f32>,
    pub step_size: Option<StepSizeRule>,
    pub loss: Option<&'a Tensor>,
}

/// Template keys of the chunked kernels for a vec4 or scalar table.
fn kernel_types(vec4: bool, wg: u32) -> [(&'static str, String); 4] {
    if vec4 {
        [
            ("T", "vec4<f32>".into()),
            ("U", "vec4<u32>".into()),
            ("WG", wg.to_string()),
            ("TOTAL", "dot(v, vec4<f32>(1.0))".into()),
        ]
    } else {
        [("T", "f32".into()), ("U", "u32".into()), ("WG", wg.to_string()), ("TOTAL", "v".into())]
    }
}

/// Stage `grad_stats`: per-chunk Σg², non-finite flags (and ScheduleFree+'s ‖g‖₁, ⟨g, z − x⟩) into `partials`.
pub(crate) fn record_grad_stats(
    plan: &mut PlanBuilder,
    groups: &[Group],
    buckets: &[Bucket],
    partials: &Tensor,
    wg: u32,
) -> Result<()> {
    for b in buckets {
        for t in &b.tables {
            // ScheduleFree+ buckets also sum g·(z − x) for the Polyak step's correction.
            let inner = matches!(groups[b.group].optimizer, OptimizerConfig::ScheduleFreePlus(_));
            let mut defines = kernel_types(t.vec4, wg).to_vec();
            defines.push(("INNER", (inner as u32).to_string()));
            defines.push(("SERIAL_SUM", (plan.gpu().is_cpu() as u32).to_string()));
            let stats = plan.gpu().clone().kernel("optim/grad_stats.wgsl", "main", &defines)?;
            let (gx, gy) = grid(t.chunks);
            let u: [u32; 4] = [t.chunks as u32, t.chunk_base as u32, gx, 0];
            let mut tensors = vec![&t.table, &b.grad, partials];
            if inner {
                tensors.extend([&b.states[0].1, &b.states[1].1]);
            }
            plan.dispatch(&stats, &u, &tensors, [gx, gy, 1])?;
        }
    }
    Ok(())
}

/// Stage `prologue`: one invocation turns the partials into the step's scalars (see prologue.wgsl).
pub(crate) fn record_prologue(
    plan: &mut PlanBuilder,
    groups: &[Group],
    state: &DeviceState,
    partials: &Tensor,
    total_chunks: usize,
    options: &StepOptions<'_>,
) -> Result<()> {
    let sfp_group = groups.iter().position(|g| matches!(g.optimizer, OptimizerConfig::ScheduleFreePlus(_)));
    let flag = |b: bool| (b as u32).to_string();
    let prologue = plan.gpu().clone().kernel(
        "optim/prologue.wgsl",
        "main",
        &[
            ("POLYAK", flag(options.step_size.is_some())),
            ("SFPLUS", flag(sfp_group.is_some())),
            ("LOSS", flag(options.loss.is_some())),
        ],
    )?;
    #[repr(C)]
    #[derive(Clone, Copy, Pod, Zeroable)]
    struct P {
        groups: u32,
        partials: u32,
        max_norm: f32,
        clip: u32,
        loss_off: u32,
        beta: f32,
        rmin: f32,
        rmax: f32,
        sfp_group: u32,
        _p: [u32; 3],
    }
    let (beta, rmin, rmax) = match options.step_size {
        Some(StepSizeRule::PolyakClamp { beta, min, max }) => (beta, min, max),
        None => (0.0, 1.0, 1.0),
    };
    let pu = P {
        groups: groups.len() as u32,
        partials: total_chunks as u32,
        max_norm: options.clip.unwrap_or(0.0),
        clip: options.clip.is_some() as u32,
        loss_off: options.loss.map_or(0, |l| l.offset() as u32),
        beta,
        rmin,
        rmax,
        sfp_group: sfp_group.unwrap_or(0) as u32,
        _p: [0; 3],
    };
    let mut tensors = vec![&state.group_buf, partials, &state.counters, &state.scalars, &state.gstate];
    if let Some(loss) = options.loss {
        tensors.push(loss);
    }
    plan.dispatch(&prologue, &pu, &tensors, [1, 1, 1])?;
    Ok(())
}

/// Stage `update`: each bucket's fused update (elementwise kernels, Adafactor per tensor, the Muon family).
pub(crate) fn record_updates(
    plan: &mut PlanBuilder,
    groups: &[Group],
    buckets: &[Bucket],
    scalars: &Tensor,
    wg: u32,
) -> Result<()> {
    for b in buckets {
        let spec = groups[b.group].optimizer.kernel();
        if let (OptimizerConfig::Adafactor(c), Some((table, count))) = (&groups[b.group].optimizer, &b.tensor_table) {
            let kernel = plan.gpu().clone().kernel(
                "optim/adafactor.wgsl",
                "main",
                &[("MOMENTUM", (c.beta1.is_some() as u32).to_string())],
            )?;
            #[repr(C)]
            #[derive(Clone, Copy, Pod, Zeroable)]
            struct A {
                tensors: u32,
                group: u32,
                flags: u32,
                _p: u32,
                h: [f32; 4],
                beta1: f32,
                wd: f32,
                _q: [f32; 2],
            }
            let u = A {
                tensors: *count as u32,
                group: b.group as u32,
                flags: spec.flags,
                _p: 0,
                h: spec.h,
                beta1: spec.beta1,
                wd: c.weight_decay,
                _q: [0.0; 2],
            };
            let mut tensors: Vec<&Tensor> = vec![table, scalars, &b.grad, &b.param];
            tensors.extend(b.states.iter().map(|(_, s)| s));
            plan.dispatch(&kernel, &u, &tensors, [*count as u32, 1, 1])?;
            continue;
        }
        if b.kron.is_some() {
            crate::optim::kron::record_step(plan, &groups[b.group], b, scalars, wg)?;
            continue;
        }
        if let (Some(c), Some(parts)) = (groups[b.group].optimizer.muon_pipeline(), &b.stack) {
            record_muon(plan, &c, &groups[b.group].optimizer, b, parts, scalars, wg)?;
            continue;
        }
        let n = spec.states.len();
        let flag = |v: bool| (if v { "1" } else { "0" }).to_string();
        for t in &b.tables {
            let mut defines = vec![
                (spec.define, "1".to_string()),
                ("STATES_1", flag(n == 1)),
                ("STATES_2", flag(n == 2)),
                ("STATES_3", flag(n == 3)),
                ("STATES_4", flag(n == 4)),
            ];
            // A composed optimizer's stages are switched on in the fused kernel.
            defines.extend(spec.stages.map(|c| c.plan().defines).unwrap_or_default());
            defines.extend(kernel_types(t.vec4, wg));
            let kernel = plan.gpu().clone().kernel("optim/update.wgsl", "main", &defines)?;
            let (gx, gy) = grid(t.chunks);
            #[repr(C)]
            #[derive(Clone, Copy, Pod, Zeroable)]
            struct Upd {
                chunks: u32,
                group: u32,
                groups_x: u32,
                flags: u32,
                h: [f32; 4],
            }
            let u = Upd { chunks: t.chunks as u32, group: b.group as u32, groups_x: gx, flags: spec.flags, h: spec.h };
            let mut tensors: Vec<&Tensor> = vec![&t.table, scalars, &b.grad, &b.param];
            tensors.extend(b.states.iter().map(|(_, s)| s));
            plan.dispatch(&kernel, &u, &tensors, [gx, gy, 1])?;
        }
    }
    Ok(())
}
