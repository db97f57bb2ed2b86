"""The crawl stage: web archives, URL lists and sites -> downloaded, resized images in img2dataset's layout."""
