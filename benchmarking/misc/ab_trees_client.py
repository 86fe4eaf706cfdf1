"""One epoch of ours (lean S3, asyncio/threaded, 2 workers) against a running server; prints img/s.
Uses only APIs that exist in both the old (9fad376) and the new tree."""
import json, sys, time
import torch
import torchvision.transforms as T
from concurrent_dataloader import DataLoader
from concurrent_dataloader.datasets import ImageDataset
from concurrent_dataloader.storage.s3_http import LeanS3Store

endpoint, data, impl = sys.argv[1], sys.argv[2], sys.argv[3]  # see ab_trees.sh
keys = json.load(open(f"{data}/index-s3-train.json"))
labels = [0] * len(keys)
tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor()])
store = LeanS3Store("synthetic", endpoint_url=endpoint, max_pool_connections=64, aws_access_key_id="bench",
                    aws_secret_access_key="bench-secret", region_name="us-east-1")
ds = ImageDataset(store, keys, labels, transform=tf)
if __name__ == "__main__":
    torch.set_num_threads(1)
    dl = DataLoader(ds, batch_size=32, shuffle=True, num_workers=2, num_fetch_workers=32, batch_pool=4,
                    fetch_impl=impl)
    n, t0, t_start = 0, time.perf_counter(), None
    for i, (x, y) in enumerate(dl):
        if i == 3:  # after the first round of both workers' batches
            t_start, n = time.perf_counter(), 0
        n += len(x)
    rate = n / (time.perf_counter() - t_start)
    print(json.dumps({"rate": rate, "total_s": time.perf_counter() - t0}))
