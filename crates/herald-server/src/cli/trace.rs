//! `herald trace`: the causation tree of what an event set off.
//!
//! An event published by a handler in reaction to another carries the
//! other's id as its `causation_id`. The tree of an event is the event and,
//! under each node, the events whose causation id is that node's id. A
//! follow-up is always appended after its cause, so one forward pass over
//! the log from the root's position finds the whole tree.

use std::collections::{HashMap, HashSet};

use herald::{EventId, RecordedEvent};
use serde::Serialize;
use uuid::Uuid;

use super::client::{CliError, Client, LogQuery};

/// How many events are read from the log per round trip.
const PAGE: usize = 1000;

/// An event and what it set off.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Tree {
    /// The event.
    pub(crate) event: RecordedEvent,
    /// The events it caused, in log order.
    pub(crate) children: Vec<Tree>,
}

impl Tree {
    /// How many events the tree holds.
    pub(crate) fn len(&self) -> usize {
        1 + self.children.iter().map(Tree::len).sum::<usize>()
    }
}

/// The causation tree of the event `id`.
pub(crate) async fn trace(client: &dyn Client, id: EventId) -> Result<Tree, CliError> {
    let root = client.event(id).await?;
    let mut in_tree: HashSet<Uuid> = HashSet::from([*root.id().as_uuid()]);
    let mut children: HashMap<Uuid, Vec<RecordedEvent>> = HashMap::new();
    let mut after = root.position().unwrap_or(0);
    loop {
        let page = client
            .read_log(&LogQuery {
                after,
                limit: PAGE,
                topics: Vec::new(),
            })
            .await?;
        let Some(last) = page.last().and_then(RecordedEvent::position) else {
            break;
        };
        for event in page {
            if let Some(cause) = event.causation_id() {
                let own = *event.id().as_uuid();
                if in_tree.contains(&cause) && own != cause && in_tree.insert(own) {
                    children.entry(cause).or_default().push(event);
                }
            }
        }
        // Until a page comes back empty: a server may cap the page size.
        if last <= after {
            break;
        }
        after = last;
    }
    Ok(build(root, &mut children))
}

fn build(event: RecordedEvent, children: &mut HashMap<Uuid, Vec<RecordedEvent>>) -> Tree {
    let kids = children.remove(event.id().as_uuid()).unwrap_or_default();
    Tree {
        children: kids.into_iter().map(|e| build(e, children)).collect(),
        event,
    }
}

/// The tree drawn with indentation, one event a line.
pub(crate) fn render(tree: &Tree) -> String {
    let mut out = String::new();
    out.push_str(&label(&tree.event));
    out.push('\n');
    draw_children(&tree.children, "", &mut out);
    out
}

fn draw_children(children: &[Tree], prefix: &str, out: &mut String) {
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        out.push_str(prefix);
        out.push_str(if last { "└── " } else { "├── " });
        out.push_str(&label(&child.event));
        out.push('\n');
        let deeper = format!("{prefix}{}", if last { "    " } else { "│   " });
        draw_children(&child.children, &deeper, out);
    }
}

fn label(e: &RecordedEvent) -> String {
    let place = match (e.stream(), e.version()) {
        (Some(s), Some(v)) => format!("{s}@{v}"),
        (Some(s), None) => s.to_owned(),
        _ => "-".to_owned(),
    };
    let position = e.position().map_or_else(String::new, |p| format!(" #{p}"));
    format!("{}  {}  {place}{position}", e.event_type(), e.id())
}
