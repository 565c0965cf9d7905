//! The Kubernetes install in `deploy/`: the manifests parse as the API's
//! own types and carry what the daemon needs (its ConfigMap's TOML loads
//! with the daemon's Config parser, the RBAC verbs are the calls the
//! Kubernetes sources make, the DaemonSet runs on the host network,
//! privileged, and installs the CNI plugin on the host), and the image
//! builds without a registry, its daemon runs under podman and its init
//! script installs the CNI plugin, the conflist and the node's
//! configuration. The image test needs root and podman; it uses storage
//! of its own, never the system's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use podswitch::config::Config;
use podswitch::membership::MembershipSource;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .into()
}

/// The manifests' objects, by kind.
fn manifests() -> Result<Vec<Value>> {
    let path = repo().join("deploy/kubernetes/podswitch.yaml");
    let text = std::fs::read_to_string(&path)?;
    let objects: Vec<Value> = serde_saphyr::from_multiple(&text)
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(objects.into_iter().filter(|o| !o.is_null()).collect())
}

fn object<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str) -> Result<T> {
    let found = objects
        .iter()
        .find(|o| o["kind"] == kind)
        .with_context(|| format!("no {kind} in the manifests"))?;
    serde_json::from_value(found.clone()).with_context(|| format!("the {kind}"))
}

#[test]
fn the_manifests_carry_what_the_daemon_needs() -> Result<()> {
    let objects = manifests()?;
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    ensure!(
        kinds
            == BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "DaemonSet",
                "ServiceAccount"
            ]),
        "{kinds:?}"
    );

    // The RBAC: exactly the calls the Kubernetes sources make: on Nodes
    // (list and watch them, get its own, patch its own annotations), on
    // Services and EndpointSlices (list and watch them, get one), on
    // Namespaces, Pods and NetworkPolicies (list and watch them).
    let role: ClusterRole = object(&objects, "ClusterRole")?;
    let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                granted
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    let rule = |group: &str, resource: &str, verbs: &[&str]| {
        let verbs = verbs.iter().map(|v| v.to_string()).collect();
        ((group.to_string(), resource.to_string()), verbs)
    };
    let wanted = BTreeMap::from([
        rule("", "nodes", &["get", "list", "watch", "patch"]),
        rule("", "services", &["get", "list", "watch"]),
        rule(
            "discovery.k8s.io",
            "endpointslices",
            &["get", "list", "watch"],
        ),
        rule("", "namespaces", &["list", "watch"]),
        rule("", "pods", &["list", "watch"]),
        rule("networking.k8s.io", "networkpolicies", &["list", "watch"]),
    ]);
    ensure!(granted == wanted, "{granted:?}");

    // The ConfigMap's TOML, as the init container fills it in, loads with
    // the daemon's parser: membership from Kubernetes, the pod CIDR left
    // to the Node (given here as the daemon would take it).
    let config_map: ConfigMap = object(&objects, "ConfigMap")?;
    let data = config_map.data.unwrap_or_default();
    let toml = data.get("podswitch.toml").context("no podswitch.toml")?;
    let filled = toml
        .replace("@NODE_IP@", "10.1.0.11")
        .replace("@UPLINK@", "eth0");
    let dir = std::env::temp_dir().join(format!("podswitch-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("podswitch.toml");
    std::fs::write(&path, &filled)?;
    let config = Config::load_assigning(&path, |text| {
        ensure!(!text.contains("pod_cidr"), "the ConfigMap names a pod_cidr");
        Ok(Some("10.244.1.0/24".parse()?))
    })?;
    std::fs::remove_dir_all(&dir)?;
    ensure!(config.membership == MembershipSource::Kubernetes);
    ensure!((config.vni, config.tunnel_udp_port()) == (1, 8472));
    let conflist: Value =
        serde_json::from_str(data.get("10-podswitch.conflist").context("no conflist")?)?;
    ensure!(
        conflist["plugins"][0]["type"] == "podswitch-cni",
        "{conflist}"
    );

    // The DaemonSet: host network, privileged, its service account, the
    // node's name for the daemon, the node's IP for the init container,
    // which installs into the host's CNI directories.
    let daemon_set: DaemonSet = object(&objects, "DaemonSet")?;
    let pod = daemon_set
        .spec
        .context("no spec")?
        .template
        .spec
        .context("no pod spec")?;
    ensure!(pod.host_network == Some(true));
    ensure!(pod.service_account_name.as_deref() == Some("podswitch"));
    let daemon = &pod.containers[0];
    let init = &pod.init_containers.clone().unwrap_or_default()[0];
    for container in [daemon, init] {
        let privileged = container
            .security_context
            .as_ref()
            .and_then(|c| c.privileged);
        ensure!(
            privileged == Some(true),
            "{} is not privileged",
            container.name
        );
    }
    let env = |c: &k8s_openapi::api::core::v1::Container, name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    ensure!(env(daemon, "NODE_NAME").as_deref() == Some("spec.nodeName"));
    ensure!(env(init, "NODE_IP").as_deref() == Some("status.hostIP"));
    let host_paths: BTreeSet<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some(v.host_path.as_ref()?.path.clone()))
        .collect();
    for path in [
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/run/podswitch",
        "/run/netns",
    ] {
        ensure!(
            host_paths.contains(path),
            "no hostPath {path}: {host_paths:?}"
        );
    }
    // TAP pods: the daemon opens the device in the pod's namespace by the
    // path the runtime gave, made after the daemon's container started.
    let netns = daemon
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/run/netns");
    ensure!(
        netns.and_then(|m| m.mount_propagation.as_deref()) == Some("HostToContainer"),
        "the daemon does not see pods' namespaces as they come: {netns:?}"
    );
    ensure!(
        daemon.command.as_ref().is_some_and(
            |c| c.join(" ") == "/bin/podswitch daemon --config /etc/podswitch/podswitch.toml"
        ),
        "{:?}",
        daemon.command
    );
    Ok(())
}

#[test]
fn the_image_builds_without_a_registry_and_its_daemon_runs() -> Result<()> {
    let binary = Path::new(env!("CARGO_BIN_EXE_podswitch"));
    let target = binary
        .parent()
        .and_then(Path::parent)
        .context("the target directory")?;
    let out = std::env::temp_dir().join(format!("podswitch-image-{}", std::process::id()));
    let home = out.join("podman");
    for sub in ["root", "runroot", "tmp"] {
        std::fs::create_dir_all(home.join(sub))?;
    }
    let podman = format!(
        "podman --root {root} --runroot {runroot} --tmpdir {tmp} --storage-driver vfs \
         --cgroup-manager cgroupfs --events-backend file --runtime runc",
        root = home.join("root").display(),
        runroot = home.join("runroot").display(),
        tmp = home.join("tmp").display(),
    );
    let image = "localhost/podswitch-test:latest";
    let built = Command::new(repo().join("deploy/image/build.sh"))
        .arg(&out)
        .env("CARGO_TARGET_DIR", target)
        .env("SKIP_BUILD", "1")
        // The binaries this test run built (its profile's directory).
        .env(
            "BINARIES",
            binary.parent().context("the binaries' directory")?,
        )
        .env("PODMAN", &podman)
        .env("IMAGE", image)
        .env("TMPDIR", home.join("tmp"))
        .output()?;
    ensure!(
        built.status.success(),
        "build.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    ensure!(out.join("podswitch-oci.tar").is_file(), "no OCI archive");
    // `podman <args>` with the test's storage.
    let podman_run = |args: &str| {
        Command::new("sh")
            .args(["-c", &format!("{podman} {args}")])
            .env("TMPDIR", home.join("tmp"))
            .output()
    };
    // Limits below the test's own: runc may not raise them (podman's
    // defaults are higher).
    let run = "run --rm --network none --ulimit nofile=1024:1024 --ulimit nproc=4096:4096";
    let ran = podman_run(&format!("{run} {image}"))?;
    // The init container's script, on host directories of the test's,
    // with the ConfigMap's files: the loopback is the one interface it
    // sees, so 127.0.0.1 is the node's IP.
    let host = out.join("host");
    let template = host.join("template");
    for dir in ["opt/cni/bin", "etc/cni/net.d", "config"] {
        std::fs::create_dir_all(host.join(dir))?;
    }
    std::fs::create_dir_all(&template)?;
    let config_map: ConfigMap = object(&manifests()?, "ConfigMap")?;
    for (file, text) in config_map.data.unwrap_or_default() {
        std::fs::write(template.join(file), text)?;
    }
    let mounts = [
        ("opt/cni/bin", "/host/opt/cni/bin"),
        ("etc/cni/net.d", "/host/etc/cni/net.d"),
        ("template", "/etc/podswitch-template"),
        ("config", "/etc/podswitch"),
    ]
    .iter()
    .map(|(from, to)| format!("--volume {}:{to}", host.join(from).display()))
    .collect::<Vec<_>>()
    .join(" ");
    let installed = podman_run(&format!(
        "{run} {mounts} --env NODE_IP=127.0.0.1 {image} /bin/sh /install.sh"
    ))?;
    let cni = Command::new(host.join("opt/cni/bin/podswitch-cni"))
        .env("CNI_COMMAND", "VERSION")
        .output();
    let conflist = std::fs::read_to_string(host.join("etc/cni/net.d/10-podswitch.conflist"));
    let config = std::fs::read_to_string(host.join("config/podswitch.toml"));
    let _ = podman_run(&format!("rmi --force {image}"));
    let _ = podman_run("system reset --force");
    let _ = std::fs::remove_dir_all(&out);
    let version = String::from_utf8_lossy(&ran.stdout);
    ensure!(
        ran.status.success() && version.starts_with("podswitch "),
        "the image's daemon: {version} {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    ensure!(
        installed.status.success(),
        "install.sh: {}",
        String::from_utf8_lossy(&installed.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&cni?.stdout).contains("supportedVersions"),
        "the installed podswitch-cni does not answer VERSION"
    );
    ensure!(conflist?.contains("podswitch-cni"), "the conflist");
    let config = config?;
    ensure!(
        config.contains("node_ip = \"127.0.0.1\"") && config.contains("uplink = \"lo\""),
        "install.sh wrote {config}"
    );
    Ok(())
}
