//! Placement by latency budget: declarations, plan, cost model, template check.
