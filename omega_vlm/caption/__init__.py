"""`omega-vlm caption`: caption many images through the jobs API, resumably."""
