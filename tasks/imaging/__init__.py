"""Image library below the stages: decode, resize and encode as the crawl stores images."""
