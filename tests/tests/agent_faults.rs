// Above 400 lines: each file under tests/ is a binary of its own (built, linked, run apart): one per feature.
//! The agent under faults: a second agent, start-ups that must fail before
//! changing anything, config edits that must not half-apply, clients that
//! hold connections or send too much, and a CLI whose reader goes away.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use dataplane_tests::{
    Cluster, ClusterSpec, Node, cluster::dataplane_binary, cni::MainPlugin, eventually,
};
use nix::sys::signal::Signal;

/// Pods made by the real ptp plugin chain, IPv6 on, as on a user's node.
fn cluster(nodes: usize, pods_per_node: usize) -> Cluster {
    Cluster::new(ClusterSpec::dataplane(nodes, pods_per_node).with_real_plugin(MainPlugin::Ptp))
        .expect("building the netns cluster")
}

/// Runs `dataplane agent` with `config` in the node's namespace until it
/// exits (it is expected to refuse to start); returns its stderr.
fn failed_start(node: &Node, config: &Path) -> anyhow::Result<String> {
    let mut command = node.netns.command(dataplane_binary()?)?;
    command.args(["agent", "--config"]).arg(config);
    failed_run(command)
}

/// Runs `command` (an agent expected to refuse to start) until it exits,
/// within 20 s; returns its stderr.
fn failed_run(mut command: Command) -> anyhow::Result<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let exited = eventually(Duration::from_secs(20), || Ok(child.try_wait()?.is_some()))?;
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("the agent started with a config it must refuse");
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)?;
    assert!(!child.wait()?.success(), "{stderr}");
    Ok(stderr)
}

/// The node's config with `from` replaced by `to`, then `bpf_root` and
/// `api_socket` moved to fresh paths (unless `to` moved them); written next
/// to the original.
fn variant(node: &Node, name: &str, from: &str, to: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
    let original = std::fs::read_to_string(&node.config)?;
    let bpf_root = node.bpf_root()?;
    let fresh_root = bpf_root.with_file_name(format!(
        "{}-{name}",
        bpf_root.file_name().unwrap().to_string_lossy()
    ));
    let fresh_socket = node.socket.with_file_name(format!("{name}.sock"));
    assert!(original.contains(from), "{original}");
    let text = original
        .replace(from, to)
        .replace(
            &bpf_root.display().to_string(),
            &fresh_root.display().to_string(),
        )
        .replace(
            &node.socket.display().to_string(),
            &fresh_socket.display().to_string(),
        );
    let path = node.config.with_file_name(format!("{name}.toml"));
    std::fs::write(&path, text)?;
    Ok((path, fresh_root))
}

/// Everything under `root` that is not a directory.
fn pins_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(directory) = stack.pop() {
        for entry in std::fs::read_dir(&directory)
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn a_second_agent_on_the_same_bpf_root_is_refused_and_the_first_keeps_serving() -> anyhow::Result<()>
{
    let cluster = cluster(2, 1);
    let node = &cluster.nodes[0];
    let other_socket = node.socket.with_file_name("second.sock");
    let config = std::fs::read_to_string(&node.config)?.replace(
        &node.socket.display().to_string(),
        &other_socket.display().to_string(),
    );
    let second = node.config.with_file_name("second.toml");
    std::fs::write(&second, config)?;
    let stderr = failed_start(node, &second)?;
    assert!(stderr.contains("another agent is running"), "{stderr}");
    // Another bpf_root but the same API socket: refused before it attaches
    // anything (before, it took the socket over and deleted it on exit).
    let bpf_root = node.bpf_root()?;
    let other_root = bpf_root.with_file_name("second-root");
    let config = std::fs::read_to_string(&node.config)?.replace(
        &bpf_root.display().to_string(),
        &other_root.display().to_string(),
    );
    std::fs::write(&second, config)?;
    let links_before = node.netns.links()?;
    let stderr = failed_start(node, &second)?;
    assert!(
        stderr.contains("another agent serves the API socket"),
        "{stderr}"
    );
    assert_eq!(pins_under(&other_root), Vec::<PathBuf>::new());
    assert_eq!(node.netns.links()?, links_before);
    // Its own root and socket, the same uplink: refused before it attaches.
    let (config, root) = variant(node, "same-uplink", "[nat]", "[nat]")?;
    let stderr = failed_start(node, &config)?;
    assert!(
        stderr.contains("another agent runs on the uplink eth0"),
        "{stderr}"
    );
    assert_eq!(pins_under(&root), Vec::<PathBuf>::new());
    assert_eq!(node.netns.links()?, links_before);
    node.cli(&["status"])?;
    node.pods[0].ping(cluster.nodes[1].pods[0].ip, 2)?;
    Ok(())
}

#[test]
fn a_start_that_fails_its_checks_changes_nothing() -> anyhow::Result<()> {
    let cluster = cluster(1, 0);
    let node = &cluster.nodes[0];
    // One more than the node map holds, each valid on its own.
    let too_many_nodes: String = (0..=dataplane_common::MAX_REMOTE_NODES)
        .map(|index| {
            let ip = std::net::Ipv4Addr::from(u32::from_be_bytes([172, 16, 0, 1]) + index);
            let cidr = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 244, 1, 0]) + 2 * index);
            format!("[[nodes]]\nip = \"{ip}\"\npod_cidr = \"{cidr}/31\"\n")
        })
        .collect::<String>()
        + "\n[nat]";
    let refused = [
        (
            "missing-uplink",
            "uplink = \"eth0\"",
            "uplink = \"nosuchlink0\"",
            "nosuchlink0 does not exist",
        ),
        (
            "port-range",
            dataplane_tests::cluster::NAT_PORT_RANGE,
            "33000-35000",
            "overlaps net.ipv4.ip_local_port_range",
        ),
        (
            "own-ip-node",
            "[nat]",
            &format!(
                "[[nodes]]\nip = \"{}\"\npod_cidr = \"10.244.99.0/24\"\n\n[nat]",
                node.ip
            ),
            "this node's own IP",
        ),
        (
            "missing-endpoint-veth",
            "[nat]",
            "[[endpoints]]\nip = \"10.244.0.9\"\ninterface = \"nosuchveth0\"\n\
             mac = \"02:00:00:00:00:09\"\n\n[nat]",
            "nosuchveth0 does not exist",
        ),
        (
            "api-socket-directory",
            "[nat]",
            // Replaced again below: a directory where the socket goes.
            "[nat]",
            "is a directory",
        ),
        (
            "too-many-nodes",
            "[nat]",
            &too_many_nodes,
            "the node map holds",
        ),
    ];
    let links_before = node.netns.links()?;
    for (name, from, to, reason) in refused {
        let (config, root) = variant(node, name, from, to)?;
        if name == "api-socket-directory" {
            std::fs::create_dir_all(node.socket.with_file_name(format!("{name}.sock")))?;
        }
        let stderr = failed_start(node, &config)?;
        assert!(stderr.contains(reason), "{name}: {stderr}");
        assert_eq!(pins_under(&root), Vec::<PathBuf>::new(), "{name}");
        let _ = std::fs::remove_dir_all(&root);
    }
    // The running agent's links, dp-vxlan among them, are the same links.
    let links_after = node.netns.links()?;
    assert_eq!(links_before, links_after);
    assert!(links_after.iter().any(|(_, name)| name == "dp-vxlan"));
    Ok(())
}

#[test]
fn config_edits_apply_whole_or_not_at_all() -> anyhow::Result<()> {
    let cluster = cluster(3, 1);
    let node = &cluster.nodes[0];
    let (second, third) = (&cluster.nodes[1], &cluster.nodes[2]);
    let listed = |ip: std::net::Ipv4Addr| -> anyhow::Result<bool> {
        Ok(node.cli(&["node", "list"])?.contains(&ip.to_string()))
    };
    // The second node from the file only.
    node.remove_remote_node(second.ip)?;
    let original = std::fs::read_to_string(&node.config)?;
    let entry = |remote: &Node| {
        format!(
            "\n[[nodes]]\nip = \"{}\"\npod_cidr = \"{}\"\n",
            remote.ip, remote.pod_cidr
        )
    };
    let with_second = format!("{original}{}", entry(second));
    std::fs::write(&node.config, &with_second)?;
    assert!(eventually(Duration::from_secs(10), || listed(second.ip))?);

    // Removing the second and adding one that overlaps the third node's CIDR
    // (known through the API) changes nothing at all.
    let overlapping = format!(
        "{original}\n[[nodes]]\nip = \"192.0.2.99\"\npod_cidr = \"{}\"\n",
        third.pod_cidr
    );
    // Then truncated by an editor, not UTF-8, impossible to start with.
    for edit in [
        overlapping.into_bytes(),
        Vec::new(),
        vec![0xff, 0xfe, b'\n'],
        with_second
            .replace("uplink = \"eth0\"", "uplink = \"nosuchlink0\"")
            .into_bytes(),
    ] {
        let refusals = || {
            node.agent_log()
                .matches("config file change refused")
                .count()
        };
        let before = refusals();
        std::fs::write(&node.config, &edit)?;
        assert!(
            eventually(Duration::from_secs(10), || Ok(refusals() > before))?,
            "{}",
            node.agent_log()
        );
        assert!(
            listed(second.ip)? && listed(third.ip)?,
            "a refused edit changed the node map"
        );
    }
    assert!(node.agent_log().contains("not UTF-8"));
    assert!(
        node.agent_log()
            .contains("could not start with this config")
    );
    node.pods[0].ping(second.pods[0].ip, 2)?;
    Ok(())
}

#[test]
fn idle_and_oversized_api_clients_do_not_lock_out_the_cni_plugin() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    // Twice as many idle clients as the agent serves at once.
    let idle: Vec<UnixStream> = (0..256)
        .map(|_| UnixStream::connect(&node.socket))
        .collect::<Result<_, _>>()?;
    // Served once the idle ones time out.
    assert!(
        eventually(Duration::from_secs(30), || Ok(node
            .cli(&["status"])
            .is_ok()))?,
        "{}",
        node.agent_log()
    );
    drop(idle);
    // A request line over the limit is refused without the agent reading it all.
    let mut flood = UnixStream::connect(&node.socket)?;
    flood.set_write_timeout(Some(Duration::from_secs(5)))?;
    flood.set_read_timeout(Some(Duration::from_secs(15)))?;
    let chunk = vec![b'x'; 1 << 16];
    let mut written = 0usize;
    while written < 8 << 20 {
        match flood.write(&chunk) {
            Ok(count) => written += count,
            Err(_) => break,
        }
    }
    let mut answer = String::new();
    let _ = flood.read_to_string(&mut answer);
    assert!(answer.contains("request longer than"), "{answer:?}");
    // A client of another protocol version is told so, not misread.
    let mut old_client = UnixStream::connect(&node.socket)?;
    old_client.set_read_timeout(Some(Duration::from_secs(15)))?;
    old_client.write_all(b"{\"request\":\"list_endpoints\"}\n")?;
    let mut answer = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&old_client), &mut answer)?;
    assert!(answer.contains("API version mismatch"), "{answer:?}");
    node.cli(&["endpoint", "list"])?;
    Ok(())
}

#[test]
fn a_cli_whose_reader_goes_away_ends_quietly() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    // `dataplane status | true`: the pipe is closed before the CLI writes.
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' --socket '{}' status | true; '{}' --socket '{}' counters | head -c 1 >/dev/null",
            dataplane_binary()?.display(),
            node.socket.display(),
            dataplane_binary()?.display(),
            node.socket.display()
        ))
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    node.cli(&["status"])?;
    Ok(())
}

#[test]
fn endpoints_the_config_file_drops_go_unless_another_source_lists_them() -> anyhow::Result<()> {
    let cluster = cluster(1, 1);
    let node = &cluster.nodes[0];
    // Registered by the CNI plugin, and listed in the file too.
    let pod = &node.pods[0];
    node.netns.add_veth("extra0", &node.netns, "extra0p")?;
    node.netns.set_up("extra0")?;
    let extra = std::net::Ipv4Addr::new(10, 244, 0, 77);
    let endpoint = |ip: std::net::Ipv4Addr, interface: &str, mac: &str| {
        format!("\n[[endpoints]]\nip = \"{ip}\"\ninterface = \"{interface}\"\nmac = \"{mac}\"\n")
    };
    let base = std::fs::read_to_string(&node.config)?;
    let listed = |ip: std::net::Ipv4Addr| -> anyhow::Result<bool> {
        Ok(node.cli(&["endpoint", "list"])?.contains(&format!("{ip} ")))
    };
    std::fs::write(
        &node.config,
        format!(
            "{base}{}{}",
            endpoint(extra, "extra0", "02:00:00:00:00:77"),
            endpoint(pod.ip, &pod.host_interface, &pod.mac.to_string())
        ),
    )?;
    node.signal_agent(Signal::SIGHUP)?;
    assert!(
        eventually(Duration::from_secs(10), || listed(extra))?,
        "{}",
        node.agent_log()
    );
    std::fs::write(&node.config, &base)?;
    node.signal_agent(Signal::SIGHUP)?;
    assert!(
        eventually(Duration::from_secs(10), || Ok(!listed(extra)?))?,
        "the endpoint only the file listed stays: {}",
        node.agent_log()
    );
    assert!(
        listed(pod.ip)?,
        "the CNI plugin's endpoint went with the file's entry"
    );
    Ok(())
}

#[test]
fn after_a_restart_the_config_file_still_owns_what_it_lists() -> anyhow::Result<()> {
    let mut cluster = cluster(2, 1);
    let second = (cluster.nodes[1].ip, cluster.nodes[1].pod_cidr);
    let node = &mut cluster.nodes[0];
    node.remove_remote_node(second.0)?;
    let original = std::fs::read_to_string(&node.config)?;
    let listed = format!(
        "{original}\n[[nodes]]\nip = \"{}\"\npod_cidr = \"{}\"\n\n\
         [[services]]\nname = \"default/filed\"\nip = \"10.96.0.77\"\nports = [{{ port = 80 }}]\n",
        second.0, second.1
    );
    std::fs::write(&node.config, &listed)?;
    let has = |node: &Node, what: &[&str], text: &str| -> anyhow::Result<bool> {
        Ok(node.cli(what)?.contains(text))
    };
    let (node_ip, service) = (second.0.to_string(), "10.96.0.77");
    assert!(eventually(Duration::from_secs(10), || has(
        node,
        &["node", "list"],
        &node_ip
    ))?);
    // A restart pins both in the maps; then the file drops them.
    node.stop_agent(Signal::SIGTERM);
    node.start_agent()?;
    assert!(has(node, &["service", "list"], service)?);
    std::fs::write(&node.config, &original)?;
    assert!(
        eventually(Duration::from_secs(10), || Ok(!has(
            node,
            &["node", "list"],
            &node_ip
        )? && !has(
            node,
            &["service", "list"],
            service
        )?))?,
        "the file's removals took no effect: {}",
        node.agent_log()
    );
    Ok(())
}

#[test]
fn more_node_addresses_than_the_map_holds_leave_the_agent_idle() -> anyhow::Result<()> {
    let cluster = cluster(1, 0);
    let node = &cluster.nodes[0];
    let extra = dataplane_common::MAX_HOST_ADDRESSES + 16;
    node.netns.exec(&[
        "ip", "link", "add", "many0", "type", "veth", "peer", "name", "many1",
    ])?;
    let batch: String = (0..extra)
        .map(|index| {
            let address = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 99, 0, 0]) + index);
            format!("address add {address}/32 dev many0\n")
        })
        .collect();
    let batch_file = node.config.with_file_name("addresses.batch");
    std::fs::write(&batch_file, batch)?;
    node.netns
        .exec(&["ip", "-batch", batch_file.to_str().unwrap()])?;
    node.netns.exec(&["ip", "link", "set", "many0", "up"])?;
    // The agent takes what fits, says so, and then rests (before, every
    // notification redid the whole set and one CPU spun at 100%).
    assert!(eventually(Duration::from_secs(20), || Ok(node
        .agent_log()
        .contains("the host address map is full")))?);
    let pid = node.agent_pid().expect("the agent runs");
    let cpu_ticks = || -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15, the 12th and 13th after the name.
        Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
    };
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks()?;
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_ticks()? - before;
    assert!(used < 150, "{used} ticks of CPU in 3 s");
    let status = node.status()?;
    let held = status["maps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|map| map["name"] == "HOST_ADDRESSES")
        .and_then(|map| map["entries"].as_u64());
    assert!(held.is_some_and(|held| held > 16_000), "{status}");
    Ok(())
}

#[test]
fn started_under_ip_netns_exec_the_agent_refuses_instead_of_a_second_program_set()
-> anyhow::Result<()> {
    let cluster = cluster(1, 0);
    let node = &cluster.nodes[0];
    let (config, root) = variant(node, "netns-exec", "[nat]", "[nat]")?;
    let links_before = node.netns.links()?;
    // `ip netns exec` gives the agent a mount namespace of its own, /sys
    // remounted: the host's bpffs, with the running agent's pins, is not there.
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", node.netns.name()])
        .arg(dataplane_binary()?)
        .args(["agent", "--config"])
        .arg(&config);
    let stderr = failed_run(command)?;
    assert!(stderr.contains("ip netns exec"), "{stderr}");
    assert_eq!(pins_under(&root), Vec::<PathBuf>::new());
    assert_eq!(node.netns.links()?, links_before, "nothing attached");
    node.cli(&["status"])?;
    Ok(())
}

#[test]
fn a_downgrade_over_a_newer_map_layout_is_refused_and_removes_nothing() -> anyhow::Result<()> {
    let cluster = cluster(1, 0);
    let node = &cluster.nodes[0];
    let (config, root) = variant(node, "downgrade", "[nat]", "[nat]")?;
    let newer = root.join(format!("v{}", dataplane_common::MAP_LAYOUT_VERSION + 1));
    std::fs::create_dir_all(&newer)?;
    let stderr = failed_start(node, &config)?;
    assert!(stderr.contains("newer than this agent's"), "{stderr}");
    assert!(newer.is_dir(), "the newer layout's pins are kept");
    assert_eq!(pins_under(&root), Vec::<PathBuf>::new());
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
