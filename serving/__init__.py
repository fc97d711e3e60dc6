"""The BentoML service (issue 5). Serving code only: it loads what components/ produced."""
