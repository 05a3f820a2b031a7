//! Config files on disk: good ones load, bad ones name the file, the field and the fix.

use crate::common::*;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn good_file_loads_and_bad_files_name_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = yaml(
        "http://127.0.0.1:8001/v1",
        "http://127.0.0.1:8002/v1",
        std::path::Path::new("audit.jsonl"),
        &Opts::default(),
    );
    let path = write(&dir, "good.yaml", &good);
    let cfg = router::config::load(&path).expect("good config loads");
    assert_eq!(cfg.tenants.len(), 2);
    assert_eq!(cfg.settings.audit_log, Some(dir.path().join("audit.jsonl")));

    let cases = [
        (
            good.replace("models: [chat-fast]", "models: [chat-slow]"),
            "tenants[1].models[0]",
        ),
        (
            good.replace(
                "keys: [sk-tenant-02-xyz]",
                "keys: [sk-tenant-02-xyz]\n    rpm: 5",
            ),
            "tenants[1].rpm",
        ),
        (
            good.replace("hosted_vllm/qwen", "qwen"),
            "model_list[1].litellm_params.model",
        ),
        (
            good.replace("num_retries: 0", "num_retries: many"),
            "router_settings.num_retries",
        ),
        (
            good.replace(
                "fallbacks: [{chat-strong: [chat-fast]}]",
                "fallbacks: [{chat-big: [chat-fast]}]",
            ),
            "router_settings.fallbacks[0].chat-big",
        ),
    ];
    for (i, (text, field)) in cases.into_iter().enumerate() {
        let p = write(&dir, &format!("bad{i}.yaml"), &text);
        let e = router::config::load(&p).expect_err("bad config is refused");
        assert_eq!(e.path(), Some(field));
        let msg = e.to_string();
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        assert!(msg.contains(field) && msg.contains("fix:"), "{msg}");
    }
}

#[test]
fn litellm_keys_we_do_not_implement_only_warn() {
    let text = yaml(
        "http://127.0.0.1:8001/v1",
        "http://127.0.0.1:8002/v1",
        std::path::Path::new("a.jsonl"),
        &Opts {
            router_settings: ", enable_pre_call_checks: true, context_window_fallbacks: []".into(),
            ..Opts::default()
        },
    ) + "litellm_settings: { drop_params: true, success_callback: [prometheus] }\n";
    let cfg = router::config::parse(&text, "x.yaml").expect("loads");
    for key in [
        "router_settings.enable_pre_call_checks",
        "router_settings.context_window_fallbacks",
        "litellm_settings",
    ] {
        assert!(
            cfg.warnings.iter().any(|w| w.contains(key)),
            "{key}: {:?}",
            cfg.warnings
        );
    }
}
