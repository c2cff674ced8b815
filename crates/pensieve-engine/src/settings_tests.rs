use super::*;

const GIB: u64 = 1 << 30;

/// Qwen2.5-7B's shapes: 28 layers, 4 KV heads of 128, f16 K and V.
fn qwen7b(train_context: u32) -> ModelFacts {
    ModelFacts {
        train_context,
        layers: 28,
        kv_bytes_per_token: 28 * 4 * 128 * 2 * 2,
        vocab: 152_064,
        weights_bytes: 0,
        heads: 28,
    }
}

fn with_gpu(free_gib: u64) -> DeviceFacts {
    DeviceFacts {
        gpu: Some(Gpu {
            description: "NVIDIA H200".into(),
            backend: "CUDA".into(),
            free_bytes: free_gib * GIB,
            total_bytes: 140 * GIB,
        }),
        host_available_bytes: Some(64 * GIB),
        physical_cores: 16,
        kv: KvAllocation::UpFront,
    }
}

fn cpu_only(available: Option<u64>) -> DeviceFacts {
    DeviceFacts {
        gpu: None,
        host_available_bytes: available,
        physical_cores: 2,
        kv: KvAllocation::UpFront,
    }
}

fn resolved(asked: Layer, model: ModelFacts, device: &DeviceFacts) -> Settings {
    resolve(&Asked::flags(asked), &model, device).expect("valid settings")
}

#[test]
fn a_flag_beats_its_variable_beats_the_config_beats_the_default() {
    let model = qwen7b(131_072);
    let device = cpu_only(Some(16 * GIB));
    let layer = |ctx, threads| Layer {
        ctx: Some(ctx),
        threads: Some(threads),
        ..Layer::default()
    };
    let mut asked = Asked {
        flags: layer(3000, 3),
        env: layer(2000, 2),
        config: layer(1000, 1),
    };
    let pick = |asked: &Asked| {
        let s = resolve(asked, &model, &device).unwrap();
        (s.ctx, s.threads)
    };
    assert_eq!(pick(&asked), (3000, 3));
    asked.flags = Layer::default();
    assert_eq!(pick(&asked), (2000, 2));
    asked.env = Layer::default();
    assert_eq!(pick(&asked), (1000, 1));
    asked.config = Layer::default();
    assert_eq!(
        pick(&asked),
        (HOST_MAX_CONTEXT, 2),
        "defaults: 32k, the cores"
    );
    // Sources are merged per setting: a flag for one leaves the others to the file.
    let asked = Asked {
        flags: Layer {
            threads: Some(8),
            ..Layer::default()
        },
        config: layer(1000, 1),
        ..Asked::default()
    };
    assert_eq!(pick(&asked), (1000, 8));
}

#[test]
fn without_a_gpu_everything_stays_on_the_cpu_as_before() {
    let s = resolved(Layer::default(), qwen7b(131_072), &cpu_only(Some(16 * GIB)));
    assert_eq!((s.gpu_layers, s.total_layers, s.kv_on_gpu), (0, 29, false));
    // A quarter of 16 GiB holds two sequences of 32k at 56 KiB a token.
    assert_eq!((s.ctx, s.parallel, s.batch, s.threads), (32_768, 2, 512, 2));
    assert_eq!((s.shrunk_from, s.may_not_fit), (None, false));
    assert_eq!(
        offload(&Asked::default(), &cpu_only(None)),
        GpuLayers::Count(0)
    );
    // Asking for layers without a GPU offloads none.
    let asked = Layer {
        gpu_layers: Some(GpuLayers::Count(10)),
        ..Layer::default()
    };
    assert_eq!(resolved(asked, qwen7b(4096), &cpu_only(None)).gpu_layers, 0);
}

#[test]
fn the_cpu_rule_fits_a_quarter_of_ram_between_one_and_four() {
    let model = qwen7b(8192);
    let parallel = |available| resolved(Layer::default(), model, &cpu_only(available)).parallel;
    assert_eq!(parallel(None), 4, "unknown memory");
    assert_eq!(parallel(Some(64 * GIB)), 4);
    assert_eq!(parallel(Some(4 * GIB)), 2);
    // Room for one sequence only: one, and no GPU warning.
    let s = resolved(Layer::default(), model, &cpu_only(Some(GIB)));
    assert_eq!((s.ctx, s.parallel, s.may_not_fit), (8192, 1, false));
    // Too little for one (448 MiB of KV in 256): refused, with the numbers.
    let err = resolve(&Asked::default(), &model, &cpu_only(Some(GIB / 4))).unwrap_err();
    assert!(
        matches!(err, SettingsError::DoesNotFit { parallel: 1, .. }),
        "{err}"
    );
    assert_eq!(
        resolved(Layer::default(), qwen7b(2048), &cpu_only(None)).ctx,
        2048,
        "a shorter trained context is kept"
    );
}

#[test]
fn a_gpu_takes_every_layer_and_the_kv_cache_by_default() {
    let device = with_gpu(100);
    assert_eq!(offload(&Asked::default(), &device), GpuLayers::All);
    let s = resolved(Layer::default(), qwen7b(32_768), &device);
    assert_eq!((s.gpu_layers, s.total_layers, s.kv_on_gpu), (29, 29, true));
    assert_eq!(
        s.backend_sampling_slots, DEFAULT_BACKEND_SAMPLING_SLOTS,
        "greedy tokens of the first slots are picked on the GPU"
    );
    // 80% of 100 GiB less 1.5 GiB holds 44 sequences of 32k (1.75 GiB each): 16 at most.
    assert_eq!((s.ctx, s.parallel), (32_768, 16));
    // A long trained context: up to 128k, 7 GiB a sequence, 10 of them (the graph's copy of
    // a batch of logits for sampling takes 1.16 GiB of the 75 GiB).
    let s = resolved(Layer::default(), qwen7b(1 << 20), &device);
    assert_eq!((s.ctx, s.parallel, s.shrunk_from), (131_072, 10, None));
}

#[test]
fn gpu_layers_zero_forces_the_cpu_and_a_number_offloads_part() {
    let device = with_gpu(100);
    let zero = Layer {
        gpu_layers: Some(GpuLayers::Count(0)),
        ..Layer::default()
    };
    let s = resolved(zero, qwen7b(131_072), &device);
    assert_eq!((s.gpu_layers, s.kv_on_gpu), (0, false));
    // The CPU's rule: 32k at most, a quarter of 64 GiB for 1.75 GiB sequences, 4 at most.
    assert_eq!((s.ctx, s.parallel), (32_768, 4));

    // Half the layers: half the KV on the GPU, half in RAM, and RAM is the tighter.
    let half = Layer {
        gpu_layers: Some(GpuLayers::Count(14)),
        ..Layer::default()
    };
    let s = resolved(half, qwen7b(131_072), &device);
    assert_eq!((s.gpu_layers, s.kv_on_gpu), (14, true));
    // 3.5 GiB a sequence in RAM, 16 GiB for KV there.
    assert_eq!((s.ctx, s.parallel), (131_072, 4));

    let many = Layer {
        gpu_layers: Some(GpuLayers::Count(1000)),
        ..Layer::default()
    };
    assert_eq!(resolved(many, qwen7b(4096), &device).gpu_layers, 29);
}

#[test]
fn a_default_context_is_halved_until_a_sequence_fits_free_vram() {
    // 80% of 10 GiB less 4.16 GiB (1 GiB, the 2048-token GPU batch, and that batch's logits
    // for sampling in the graph): 3.84 GiB. 128k takes 7 GiB, 64k 3.5 GiB.
    let s = resolved(Layer::default(), qwen7b(131_072), &with_gpu(10));
    assert_eq!((s.ctx, s.parallel), (65_536, 1));
    assert_eq!((s.shrunk_from, s.may_not_fit), (Some(131_072), false));

    // A trained context that is no power of two falls to one first: 40k -> 32k -> 16k.
    let s = resolved(Layer::default(), qwen7b(40_960), &with_gpu(7));
    assert_eq!(
        (s.ctx, s.parallel, s.shrunk_from),
        (16_384, 1, Some(40_960))
    );

    // Not even 4k fits: 4k and one sequence, with a warning.
    let s = resolved(Layer::default(), qwen7b(131_072), &with_gpu(2));
    assert_eq!((s.ctx, s.parallel, s.may_not_fit), (4096, 1, true));

    // Asked-for sequences are what must fit: 4 of them need 16k here.
    let four = Layer {
        parallel: Some(4),
        ..Layer::default()
    };
    let s = resolved(four, qwen7b(131_072), &with_gpu(10));
    assert_eq!((s.ctx, s.parallel, s.may_not_fit), (16_384, 4, false));
}

#[test]
fn an_asked_context_or_parallel_is_never_changed() {
    // 2 x 32k take 3.5 GiB: past the estimate (with a warning), within the free 5 GiB.
    let both = Layer {
        ctx: Some(32_768),
        parallel: Some(2),
        ..Layer::default()
    };
    let s = resolved(both, qwen7b(131_072), &with_gpu(5));
    assert_eq!((s.ctx, s.parallel, s.shrunk_from), (32_768, 2, None));
    assert!(s.may_not_fit);
    // An asked context too long for free VRAM gets one sequence and a warning.
    let ctx = Layer {
        ctx: Some(131_072),
        ..Layer::default()
    };
    let s = resolved(ctx, qwen7b(131_072), &with_gpu(8));
    assert_eq!((s.ctx, s.parallel, s.may_not_fit), (131_072, 1, true));
    // Longer than trained is allowed (with a warning in the log).
    let long = Layer {
        ctx: Some(16_384),
        ..Layer::default()
    };
    assert_eq!(resolved(long, qwen7b(8192), &cpu_only(None)).ctx, 16_384);
}

#[test]
fn the_batch_is_at_most_the_context_and_threads_at_least_one() {
    let small = Layer {
        ctx: Some(256),
        threads: Some(0),
        ..Layer::default()
    };
    let s = resolved(small, qwen7b(8192), &cpu_only(None));
    assert_eq!((s.batch, s.threads), (256, 1));
    let batch = Layer {
        batch: Some(2048),
        ..Layer::default()
    };
    assert_eq!(resolved(batch, qwen7b(8192), &cpu_only(None)).batch, 2048);
}

#[test]
fn mlx_grows_its_kv_so_parallel_bounds_work() {
    let device = DeviceFacts {
        gpu: None,
        host_available_bytes: None,
        physical_cores: 8,
        kv: KvAllocation::Growing,
    };
    let model = ModelFacts {
        train_context: 131_072,
        layers: 0,
        kv_bytes_per_token: 0,
        vocab: 0,
        weights_bytes: 0,
        heads: 0,
    };
    let s = resolved(Layer::default(), model, &device);
    assert_eq!((s.ctx, s.parallel, s.gpu_layers), (32_768, 4, 0));
    let unknown = ModelFacts {
        train_context: 0,
        ..model
    };
    assert_eq!(resolved(Layer::default(), unknown, &device).ctx, 32_768);
}

#[test]
fn zeros_and_too_many_sequences_are_refused_by_their_names() {
    let model = qwen7b(8192);
    let device = cpu_only(None);
    let err = |asked: Asked| {
        resolve(&asked, &model, &device)
            .expect_err("refused")
            .to_string()
    };
    let ctx0 = Layer {
        ctx: Some(0),
        ..Layer::default()
    };
    let parallel = |n| Layer {
        parallel: Some(n),
        ..Layer::default()
    };
    assert_eq!(err(Asked::flags(ctx0)), "--ctx must be at least 1");
    assert_eq!(
        err(Asked::flags(parallel(0))),
        "--parallel must be at least 1"
    );
    assert_eq!(
        err(Asked::flags(parallel(257))),
        "--parallel must be at most 256"
    );
    assert_eq!(
        err(Asked {
            env: parallel(300),
            ..Asked::default()
        }),
        "PENSIEVE_PARALLEL must be at most 256"
    );
    assert_eq!(
        err(Asked {
            config: ctx0,
            ..Asked::default()
        }),
        "ctx in the config file must be at least 1"
    );
    // A 0 in the file under a flag is never used, so never refused.
    let over = Asked {
        flags: Layer {
            ctx: Some(1024),
            ..Layer::default()
        },
        config: ctx0,
        ..Asked::default()
    };
    assert_eq!(resolve(&over, &model, &device).unwrap().ctx, 1024);
    assert!(Asked::flags(parallel(256)).validate().is_ok());
}

#[test]
fn gpu_layers_are_a_number_or_all() {
    assert_eq!("all".parse(), Ok(GpuLayers::All));
    assert_eq!(" ALL ".parse(), Ok(GpuLayers::All));
    assert_eq!("12".parse(), Ok(GpuLayers::Count(12)));
    let err = "-1".parse::<GpuLayers>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "\"-1\" is neither a number of layers nor `all`"
    );
    assert_eq!(GpuLayers::All.to_string(), "all");
    assert_eq!(GpuLayers::All.requested(), u32::MAX);
    assert_eq!(GpuLayers::Count(7).requested(), 7);
    let json = |s: &str| serde_json::from_str::<GpuLayers>(s).map_err(|e| e.to_string());
    assert_eq!(json("12"), Ok(GpuLayers::Count(12)));
    assert_eq!(json("\"all\""), Ok(GpuLayers::All));
    assert!(json("-1")
        .unwrap_err()
        .contains("a number of layers or \"all\""));
    assert!(json("\"most\"").is_err());
}

#[test]
fn env_names_and_flags_are_spelled_as_the_user_writes_them() {
    assert_eq!(Source::Flag.name("gpu_layers"), "--gpu-layers");
    assert_eq!(Source::Env.name("gpu_layers"), "PENSIEVE_GPU_LAYERS");
    assert_eq!(
        Source::Config.name("gpu_layers"),
        "gpu_layers in the config file"
    );
}

#[test]
fn prefix_cache_ram_is_a_quarter_of_what_is_left() {
    assert_eq!(cache_ram(None), FALLBACK_CACHE_RAM);
    assert_eq!(cache_ram(Some(16 * GIB)), 4 * GIB);
    assert_eq!(cache_ram(Some(GIB / 2)), 256 << 20);
}

#[test]
fn halving_goes_to_the_power_of_two_below() {
    assert_eq!(halve(131_072), 65_536);
    assert_eq!(halve(40_960), 32_768);
    assert_eq!(halve(5000), 4096);
}

#[test]
fn backend_sampling_follows_the_gpu_unless_asked() {
    let slots = |asked: Option<bool>, layers: Option<u32>, device: &DeviceFacts| {
        let layer = Layer {
            backend_sampling: asked,
            gpu_layers: layers.map(GpuLayers::Count),
            parallel: Some(8),
            ..Layer::default()
        };
        resolved(layer, qwen7b(4096), device).backend_sampling_slots
    };
    let gpu = with_gpu(100);
    assert_eq!(slots(None, None, &gpu), DEFAULT_BACKEND_SAMPLING_SLOTS);
    assert_eq!(slots(Some(true), None, &gpu), 8, "every slot");
    assert_eq!(slots(Some(false), None, &gpu), 0);
    assert_eq!(slots(None, Some(0), &gpu), 0, "the model is on the CPU");
    assert_eq!(slots(None, None, &cpu_only(None)), 0);
    // Asked for on the CPU, the graph's argmax runs there.
    assert_eq!(slots(Some(true), None, &cpu_only(None)), 8);
}

#[test]
fn sampling_in_the_graph_leaves_room_for_a_batch_of_logits() {
    // 80% of 20 GiB, less 1 GiB and the 2,048-token batch's 2 GiB: 13 GiB, or 7 sequences of
    // 32k (1.75 GiB each) when the host samples. The graph's copy of 2,048 rows of 152k
    // logits (1.16 GiB) leaves room for 6, and for 4 with a vocabulary four times as large.
    let device = with_gpu(20);
    let parallel = |asked: Option<bool>, vocab: u32| {
        let layer = Layer {
            backend_sampling: asked,
            ctx: Some(32_768),
            ..Layer::default()
        };
        let model = ModelFacts {
            vocab,
            ..qwen7b(32_768)
        };
        resolved(layer, model, &device).parallel
    };
    assert_eq!(parallel(Some(false), 152_064), 7);
    assert_eq!(parallel(None, 152_064), 6);
    assert_eq!(parallel(None, 4 * 152_064), 4);
}

#[test]
fn kv_cache_types_parse_as_llama_server_spells_them_and_size_the_cache() {
    for t in KvType::ALL {
        assert_eq!(t.name().parse::<KvType>(), Ok(t));
        assert_eq!(t.name().to_uppercase().parse::<KvType>(), Ok(t));
    }
    let err = "q3".parse::<KvType>().unwrap_err().to_string();
    assert!(err.contains("q8_0") && err.contains("\"q3\""), "{err}");
    assert!(KvType::Q8_0.is_quantized() && !KvType::Bf16.is_quantized());

    // ggml's block sizes: q8_0 is 34 bytes per 32 values against f16's 64, q4_0 18.
    let f16 = 28 * 4 * 128 * 2 * 2;
    assert_eq!(kv_bytes_with(f16, KvType::F16, KvType::F16), f16);
    assert_eq!(
        kv_bytes_with(f16, KvType::Q8_0, KvType::Q8_0),
        f16 * 34 / 64
    );
    assert_eq!(
        kv_bytes_with(f16, KvType::Q8_0, KvType::Q4_0),
        f16 / 2 * (34 + 18) / 64
    );

    // The default is f16; a quantized cache lets the GPU default hold twice the context
    // that f16 gets (64k in f16 above, 128k in q8_0: 3.72 GiB of the 3.84 free).
    let s = resolved(Layer::default(), qwen7b(131_072), &with_gpu(10));
    assert_eq!((s.cache_type_k, s.cache_type_v), (KvType::F16, KvType::F16));
    let q8 = Layer {
        cache_type_k: Some(KvType::Q8_0),
        cache_type_v: Some(KvType::Q8_0),
        ..Layer::default()
    };
    let s = resolved(q8, qwen7b(131_072), &with_gpu(10));
    assert_eq!((s.ctx, s.shrunk_from), (131_072, None));
    assert_eq!(s.cache_type_k, KvType::Q8_0);
}

#[test]
fn an_engine_without_kv_types_names_the_setting_it_refuses() {
    let asked = Asked {
        config: Layer {
            cache_type_v: Some(KvType::Q4_0),
            ..Layer::default()
        },
        ..Asked::default()
    };
    let err = asked.refuse_kv_types("mlx").unwrap_err().to_string();
    assert_eq!(
        err,
        "cache_type_v in the config file asks for q4_0, but the mlx engine keeps its KV cache in the model's own type"
    );
    let f16 = Asked::flags(Layer {
        cache_type_k: Some(KvType::F16),
        ..Layer::default()
    });
    assert!(f16.refuse_kv_types("mlx").is_ok());
    let fa = Asked::flags(Layer {
        flash_attn: Some(FlashAttn::On),
        ..Layer::default()
    });
    assert_eq!(
        fa.refuse_kv_types("mlx").unwrap_err().to_string(),
        "--flash-attn on is a setting of the llama engine, not of the mlx engine"
    );
}

#[test]
fn flash_attention_is_llama_cpps_choice_unless_asked() {
    let model = qwen7b(32_768);
    let on_cpu = |asked| resolved(asked, model, &cpu_only(Some(64 * GIB))).flash_attn;
    assert_eq!(on_cpu(Layer::default()), FlashAttn::Auto);
    let off = Layer {
        flash_attn: Some(FlashAttn::Off),
        ..Layer::default()
    };
    assert_eq!(on_cpu(off), FlashAttn::Off);
    assert_eq!(
        resolved(Layer::default(), model, &with_gpu(100)).flash_attn,
        FlashAttn::Auto
    );
    assert_eq!(
        resolved(off, model, &with_gpu(100)).flash_attn,
        FlashAttn::Off
    );
}

#[test]
fn flash_attention_off_with_a_quantized_v_is_refused_by_name() {
    let asked = Asked {
        flags: Layer {
            flash_attn: Some(FlashAttn::Off),
            ..Layer::default()
        },
        config: Layer {
            cache_type_v: Some(KvType::Q4_0),
            ..Layer::default()
        },
        ..Asked::default()
    };
    let err = resolve(&asked, &qwen7b(4096), &cpu_only(None)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a q4_0 V cache (cache_type_v in the config file) needs flash attention, which \
         --flash-attn turns off"
    );
    // A quantized K alone is fine without it.
    let k_only = Layer {
        flash_attn: Some(FlashAttn::Off),
        cache_type_k: Some(KvType::Q8_0),
        ..Layer::default()
    };
    assert!(resolve(&Asked::flags(k_only), &qwen7b(4096), &cpu_only(None)).is_ok());
}

#[test]
fn flash_attention_names_parse_as_llama_servers() {
    for (text, want) in [
        ("on", FlashAttn::On),
        ("OFF", FlashAttn::Off),
        ("auto", FlashAttn::Auto),
        ("true", FlashAttn::On),
        ("0", FlashAttn::Off),
    ] {
        assert_eq!(text.parse::<FlashAttn>(), Ok(want), "{text}");
    }
    assert!("maybe".parse::<FlashAttn>().is_err());
}

#[test]
fn weights_and_kv_past_the_available_memory_are_refused_with_the_numbers() {
    let model = ModelFacts {
        weights_bytes: 5 * GIB,
        ..qwen7b(131_072)
    };
    let device = cpu_only(Some(16 * GIB));
    // 4 x 32k tokens of 56 KiB: 7 GiB of KV, with 5 of weights: 12 of 16 fit.
    let fits = Layer {
        ctx: Some(32_768),
        parallel: Some(4),
        ..Layer::default()
    };
    assert!(resolve(&Asked::flags(fits), &model, &device).is_ok());
    let asked = Layer {
        ctx: Some(65_536),
        ..fits
    };
    let err = resolve(&Asked::flags(asked), &model, &device).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the model does not fit in memory: its weights (5.0 GiB) and a KV cache of 4 x 65536 \
         tokens (14.0 GiB) need 19.0 GiB, and 16.0 GiB is available; ask for a smaller --ctx or \
         --parallel, or a smaller --cache-type-k/-v (q8_0 halves the cache)"
    );
    // Flash attention asked off: its attention scores count too.
    let off = Layer {
        flash_attn: Some(FlashAttn::Off),
        ..asked
    };
    let err = resolve(&Asked::flags(off), &model, &device).unwrap_err();
    assert!(
        err.to_string().contains(
            "and attention scores without flash attention (3.5 GiB; --flash-attn on saves them) \
             need 22.5 GiB"
        ),
        "{err}"
    );
    // The same in q8_0 fits.
    let q8 = Layer {
        cache_type_k: Some(KvType::Q8_0),
        cache_type_v: Some(KvType::Q8_0),
        ..asked
    };
    assert!(resolve(&Asked::flags(q8), &model, &device).is_ok());
    // The defaults always fit: they are sized from the memory.
    assert!(resolve(&Asked::default(), &model, &device).is_ok());
    // A GPU takes the KV: that budget is the GPU's.
    assert!(resolve(&Asked::flags(asked), &model, &with_gpu(80)).is_ok());
}

#[test]
fn a_kv_cache_past_the_gpus_free_memory_is_refused_with_the_numbers() {
    // 3 x 128k of Qwen2.5-7B take 21 GiB; 10 GiB are free after the weights.
    let asked = Layer {
        ctx: Some(131_072),
        parallel: Some(3),
        ..Layer::default()
    };
    let err = resolve(&Asked::flags(asked), &qwen7b(131_072), &with_gpu(10)).unwrap_err();
    assert!(matches!(
        err,
        SettingsError::DoesNotFitGpu {
            ctx: 131_072,
            parallel: 3,
            ..
        }
    ));
    let text = err.to_string();
    assert!(
        text.contains("21.0 GiB") && text.contains("10.0 GiB") && text.contains("NVIDIA H200"),
        "{text}"
    );
    // Half the layers on the GPU: only their KV counts against it (10.5 GiB, still over).
    let half = Layer {
        gpu_layers: Some(GpuLayers::Count(14)),
        ..asked
    };
    assert!(resolve(&Asked::flags(half), &qwen7b(131_072), &with_gpu(10)).is_err());
    // q4_0 K and V take 18/64 of that: 5.9 GiB fit.
    let small = Layer {
        cache_type_k: Some(KvType::Q4_0),
        cache_type_v: Some(KvType::Q4_0),
        ..asked
    };
    assert!(resolve(&Asked::flags(small), &qwen7b(131_072), &with_gpu(10)).is_ok());
    // Not even the smallest default context fits 100 MiB: refused, not a crash later.
    let tiny = DeviceFacts {
        gpu: Some(Gpu {
            free_bytes: 100 << 20,
            ..with_gpu(0).gpu.unwrap()
        }),
        ..with_gpu(0)
    };
    assert!(resolve(&Asked::flags(Layer::default()), &qwen7b(131_072), &tiny).is_err());
}
