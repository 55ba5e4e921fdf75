-- When each agent last reported as of a moment, and its lag over time (dashboards: "Sites
-- reporting", "Agent lag"), without reading every report the agent ever sent.
CREATE INDEX reports_agent_created ON reports (agent_id, created_at);
