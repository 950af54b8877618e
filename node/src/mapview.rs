//! Showing a neighbourhood map: a table for a person, JSON for a program, Graphviz `dot` for a
//! picture (`brume map --dot | dot -Tpng > map.png`).

use std::fmt::Write as _;

use brume_overlay::neighbourhood::NeighbourhoodMap;

/// One line per node (resources, load, coordinate), then one per measured link.
pub fn table(map: &NeighbourhoodMap, origin: Option<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<18} {:>11} {:>13} {:>5} {:>6} {:>22}",
        "node", "cpu free", "memory free", "load", "rel", "coordinate (ms)"
    );
    for n in &map.nodes {
        let mark = if Some(n.id.0) == origin { "*" } else { "" };
        let _ = writeln!(
            s,
            "{:<18} {:>5}/{:<5} {:>6}/{:<6} {:>5.2} {:>6.3} {:>22}",
            format!("{}{mark}", n.id),
            n.cpu_free_milli,
            n.cpu_total_milli,
            n.mem_free_mb,
            n.mem_total_mb,
            n.load,
            n.reliability,
            format!(
                "({:.1}, {:.1}, h {:.1})",
                n.coord.x, n.coord.y, n.coord.height
            ),
        );
    }
    let _ = writeln!(s, "\n{:<18} {:<18} {:>9}", "link", "", "rtt ms");
    for l in &map.links {
        let _ = writeln!(
            s,
            "{:<18} {:<18} {:>9.2}",
            l.a.to_string(),
            l.b.to_string(),
            l.rtt_ms
        );
    }
    let _ = write!(
        s,
        "{} nodes, {} measured links",
        map.nodes.len(),
        map.links.len()
    );
    s
}

/// An undirected Graphviz graph: nodes labelled with their id and free resources, edges with
/// their RTT, the origin drawn bold; edge lengths follow RTT for `neato`.
pub fn dot(map: &NeighbourhoodMap, origin: Option<u64>) -> String {
    let mut s =
        String::from("graph neighbourhood {\n  node [shape=box, fontname=\"monospace\"];\n");
    for n in &map.nodes {
        let style = if Some(n.id.0) == origin {
            ", style=bold, penwidth=2"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "  \"{}\" [label=\"{}\\ncpu {}/{}m\\nmem {}/{} MiB\"{style}];",
            n.id, n.id, n.cpu_free_milli, n.cpu_total_milli, n.mem_free_mb, n.mem_total_mb
        );
    }
    for l in &map.links {
        let _ = writeln!(
            s,
            "  \"{}\" -- \"{}\" [label=\"{:.1} ms\", len={:.2}];",
            l.a,
            l.b,
            l.rtt_ms,
            (l.rtt_ms / 10.0).max(0.5)
        );
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::ids::NodeId;
    use brume_overlay::neighbourhood::{Link, NodeRecord};

    fn sample() -> NeighbourhoodMap {
        NeighbourhoodMap {
            nodes: vec![NodeRecord::bare(NodeId(1)), NodeRecord::bare(NodeId(2))],
            links: vec![Link::new(NodeId(2), NodeId(1), 12.5)],
        }
    }

    #[test]
    fn dot_renders_with_graphviz() {
        let text = dot(&sample(), Some(1));
        assert!(text.contains("12.5 ms"));
        // The real Graphviz must accept it (scripts/install-deps.sh installs it).
        let mut child = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("graphviz `dot` is installed by scripts/install-deps.sh");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(text.as_bytes())
            .expect("dot reads the graph");
        let out = child.wait_with_output().expect("dot runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("<svg"));
    }

    #[test]
    fn table_lists_every_node_and_link() {
        let t = table(&sample(), Some(1));
        assert!(t.contains("2 nodes, 1 measured links"), "{t}");
        assert!(t.contains("12.50"), "{t}");
    }
}
