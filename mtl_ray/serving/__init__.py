"""The serving stage, on Ray: a trained model scores shards in bulk with Ray Data (`score`) or
answers HTTP requests as a Ray Serve application (`serve`, reading requests with `http`)."""
