"""Stack + HostFacts -> Plan: the decision table, the memory planner, speed, capacity and reports (pure)."""
